//! Integration tests of the store: real members with rocksdb on disk, serving their peer API
//! over loopback HTTP (members of a group on distinct 127.0.0.x addresses).

mod cluster;
mod single;
mod support;
mod watch;
