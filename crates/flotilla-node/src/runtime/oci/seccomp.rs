//! The `RuntimeDefault` seccomp profile: what a container may ask of the kernel. Everything not
//! named here fails with `EPERM`, so that a syscall added to a later kernel is denied until it
//! is judged. What is allowed is what ordinary programs (libc's, Go's, the JVM's) use on the
//! host's own ABI; what is left out reaches past the container's namespaces or is a known
//! kernel attack surface: mounting and pivoting, namespaces (`unshare`, `setns`, `clone` with
//! namespace flags), modules and `kexec`, `bpf`, `perf_event_open`, the keyring, `ptrace` and
//! the cross-process memory calls, `userfaultfd`, `io_uring`, file handles, clocks, swap,
//! quotas, accounting, `syslog`, `reboot`, port I/O.
//!
//! The profile is built for the native architecture alone: another ABI's calls (a 32-bit
//! binary's `int 0x80`) are refused whole. A capability the container is granted may bring a
//! syscall of its own (`CAP_SYS_CHROOT`: `chroot`), as container runtimes' defaults do.

use serde_json::{Value, json};

/// Syscalls every container may make.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    // Files and directories.
    "access", "chdir", "chmod", "chown", "close", "close_range", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown",
    "fchownat", "fcntl", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat",
    "fstatfs", "fsync", "ftruncate", "futimesat", "getcwd", "getdents", "getdents64", "getxattr", "getxattrat",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "lchown", "lgetxattr", "link", "linkat",
    "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "mkdir", "mkdirat",
    "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pread64", "preadv", "preadv2", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "removexattr", "removexattrat",
    "rename", "renameat", "renameat2", "rmdir", "sendfile", "setxattr", "setxattrat", "splice", "stat", "statfs",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate", "umask", "unlink",
    "unlinkat", "utime", "utimensat", "utimes", "vmsplice", "write", "writev", "cachestat",
    // Memory.
    "brk", "get_mempolicy", "getrandom", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "mincore", "mlock", "mlock2",
    "mlockall", "mmap", "mprotect", "mremap", "mseal", "msync", "munlock", "munlockall", "munmap", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "remap_file_pages",
    // Processes and threads (`clone` is allowed below without namespace flags).
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "get_robust_list",
    "get_thread_area", "getcpu", "getegid", "geteuid", "getgid", "getgroups", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getresgid", "getresuid", "getrlimit", "getrusage", "getsid", "gettid", "getuid",
    "ioprio_get", "ioprio_set", "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "modify_ldt", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "restart_syscall", "rseq",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "set_robust_list", "set_thread_area", "set_tid_address",
    "setfsgid", "setfsuid", "setgid", "setgroups", "setpgid", "setpriority", "setregid", "setresgid", "setresuid",
    "setreuid", "setrlimit", "setsid", "setuid", "sysinfo", "tgkill", "times", "tkill", "uname", "uretprobe",
    "vfork", "wait4", "waitid",
    // Signals.
    "alarm", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4",
    // Time and timers (reading clocks, not setting them).
    "clock_getres", "clock_gettime", "clock_nanosleep", "getitimer", "gettimeofday", "nanosleep", "setitimer", "time",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime", "timerfd_create",
    "timerfd_gettime", "timerfd_settime",
    // Waiting on events, and asynchronous I/O (not io_uring).
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd", "eventfd2",
    "futex", "futex_requeue", "futex_wait", "futex_waitv", "futex_wake", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_setup", "io_submit", "ioctl", "pipe", "pipe2", "poll", "ppoll", "pselect6", "select",
    // Sockets.
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recvfrom",
    "recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketpair",
    // System V and POSIX IPC, in the pod's own IPC namespace.
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink", "msgctl", "msgget",
    "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop", "shmat", "shmctl", "shmdt", "shmget",
];

/// Syscalls a capability brings, when the container holds it.
const BY_CAPABILITY: &[(&str, &[&str])] = &[("CAP_SYS_CHROOT", &["chroot"])];

/// `clone`'s flags that make new namespaces (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`,
/// `NEWUSER`, `NEWPID`, `NEWNET`, `NEWTIME`): a `clone` carrying any of them is refused.
const NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x0000_0080;

/// `EPERM`, what a refused syscall returns; `ENOSYS` for `clone3`, whose flags are in memory a
/// filter cannot read: libc then falls back to `clone`, whose flags it can.
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The profile (the OCI spec's `linux.seccomp`) for a container holding `capabilities`.
pub(super) fn runtime_default(capabilities: &[String]) -> Value {
    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    for (capability, syscalls) in BY_CAPABILITY {
        if capabilities.iter().any(|c| c == capability) {
            allowed.extend_from_slice(syscalls);
        }
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_NATIVE"],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            // libcontainer reads a masked comparison as `arg & valueTwo == value` (runc reads
            // the two the other way round): no namespace flag set.
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "valueTwo": NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            // The Linux personality, and asking which it is; not the others (they turn off
            // address space randomisation, among other things).
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0xffff_ffffu32, "op": "SCMP_CMP_EQ"}]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &Value) -> Vec<String> {
        serde_json::from_value(profile["syscalls"][0]["names"].clone()).unwrap()
    }

    #[test]
    fn what_reaches_past_the_container_is_left_out() {
        let profile = runtime_default(&[]);
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        let names = allowed(&profile);
        let everyday =
            ["read", "openat", "mmap", "execve", "socket", "futex", "rseq", "statx", "close_range", "getrandom"];
        for everyday in everyday {
            assert!(names.iter().any(|n| n == everyday), "{everyday}");
        }
        for escape in [
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "init_module",
            "finit_module",
            "kexec_load",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "ptrace",
            "process_vm_writev",
            "userfaultfd",
            "io_uring_setup",
            "open_by_handle_at",
            "name_to_handle_at",
            "clock_settime",
            "settimeofday",
            "swapon",
            "reboot",
            "acct",
            "quotactl",
            "syslog",
            "iopl",
            "ioperm",
            "chroot",
            "clone",
            "clone3",
        ] {
            assert!(!names.iter().any(|n| n == escape), "{escape}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "each syscall once");
        // The profile is one youki reads.
        let parsed: libcontainer::oci_spec::runtime::LinuxSeccomp = serde_json::from_value(profile).unwrap();
        assert_eq!(parsed.syscalls().as_ref().unwrap().len(), 6);
    }

    #[test]
    fn a_capability_brings_its_syscall() {
        assert!(allowed(&runtime_default(&["CAP_SYS_CHROOT".into()])).iter().any(|n| n == "chroot"));
    }
}
