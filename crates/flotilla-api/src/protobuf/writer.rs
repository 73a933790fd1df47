//! Protobuf encoding, for the few documents the server answers in protobuf (OpenAPI v2).

/// Writes one message's fields. Like proto3, an empty string or a false bool is not written.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.bytes.push(v as u8);
    }

    fn tag(&mut self, number: u32, wire: u8) {
        self.varint(u64::from(number) << 3 | u64::from(wire));
    }

    pub fn bytes(&mut self, number: u32, bytes: &[u8]) {
        self.tag(number, 2);
        self.varint(bytes.len() as u64);
        self.bytes.extend_from_slice(bytes);
    }

    pub fn string(&mut self, number: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(number, s.as_bytes());
        }
    }

    pub fn uint(&mut self, number: u32, v: u64) {
        self.tag(number, 0);
        self.varint(v);
    }

    pub fn bool(&mut self, number: u32, v: bool) {
        if v {
            self.uint(number, 1);
        }
    }

    /// An embedded message, written by `body`; it is written even when empty, so that its
    /// presence shows.
    pub fn message(&mut self, number: u32, body: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        body(&mut inner);
        self.bytes(number, &inner.bytes);
    }
}
