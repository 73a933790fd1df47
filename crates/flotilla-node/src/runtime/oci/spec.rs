//! A container's OCI runtime spec (`config.json`), worked out from what the node and the image
//! say: a pure function, so that every decision (argv, user, capabilities, limits, mounts,
//! which namespaces are the pod's) is tested without root.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::images::container::{RunConfig, argv, merge_env};

/// The capabilities a container has unless its `securityContext` says otherwise: containerd's
/// default set, which upstream's clusters run with.
pub(crate) const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The CFS period CPU limits are quotas of, as the kubelet's (100 ms).
const CPU_PERIOD: u64 = 100_000;
/// `PATH` when neither the image nor the pod sets one, as containerd's.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything one container's spec is made of.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inputs {
    /// Whose run it is: the pod's uid, the container's name, and the run's number (its
    /// restart count), written as the kubelet's annotations for an agent that finds it left
    /// behind ([`RunLabels::of`]).
    pub labels: RunLabels,
    pub image: RunConfig,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The numeric user and group it runs as (`runAsUser`, `runAsGroup`, else the image's).
    pub user: (u32, u32),
    pub read_only_root: bool,
    /// `securityContext.capabilities`.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// What may be added beyond the default set.
    pub addable_capabilities: Vec<String>,
    /// What the node withholds whatever the pod asks, of the default set too.
    pub withheld_capabilities: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// The seccomp profile it runs under (`RuntimeDefault` unless the pod asks for
    /// `Unconfined`): `false` for none.
    pub seccomp: bool,
    /// The root filesystem, prepared by the node.
    pub rootfs: PathBuf,
    /// Host directories at container paths: `(source, destination, read-only)`.
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// The pod's namespaces, which its containers join: network, UTS, IPC.
    pub network_ns: PathBuf,
    pub uts_ns: PathBuf,
    pub ipc_ns: PathBuf,
    /// The pod's PID namespace, if its containers share one (`shareProcessNamespace`); else
    /// each has its own.
    pub pid_ns: Option<PathBuf>,
    /// The cgroup it runs in (`/flotilla/<qos>/pod<uid>/<id>`).
    pub cgroup: String,
    pub memory_limit: Option<u64>,
    /// Whether the memory limit bounds swap too (where the kernel accounts for it).
    pub swap_limit: bool,
    /// In cores.
    pub cpu_limit: Option<f64>,
    /// In cores: what it is weighted by when the CPU is contended.
    pub cpu_request: Option<f64>,
    pub pids_limit: Option<i64>,
}

/// Whose run a container is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunLabels {
    pub pod_uid: String,
    pub container: String,
    pub attempt: i32,
}

/// The kubelet's names for them, as annotations of the spec.
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";
const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

impl RunLabels {
    /// Whose run the container whose spec is `spec` is; `None` for one made before specs said
    /// (an earlier version of the agent), which only a status naming its id can adopt.
    pub(crate) fn of(spec: &Value) -> Option<RunLabels> {
        let annotation = |name: &str| spec["annotations"][name].as_str();
        Some(RunLabels {
            pod_uid: annotation(POD_UID)?.to_string(),
            container: annotation(CONTAINER_NAME)?.to_string(),
            attempt: annotation(RESTART_COUNT)?.parse().ok()?,
        })
    }
}

/// The user and group an image's `User` names: numbers, or names looked up in the image's
/// `/etc/passwd` and `/etc/group` (given as their contents).
pub(crate) fn image_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (name, group_name) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if name.is_empty() {
        return Ok((0, 0));
    }
    let entry = |table: &str, key: &str| -> Option<Vec<String>> {
        table
            .lines()
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.first().is_some_and(|n| n == key))
    };
    let (uid, primary_gid) = match name.parse::<u32>() {
        Ok(uid) => (uid, entry_by_uid(passwd, uid).unwrap_or(0)),
        Err(_) => {
            let fields = entry(passwd, name)
                .ok_or_else(|| format!("unable to find user {name}: no matching entries in passwd file"))?;
            let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok());
            (parse(2).ok_or_else(|| format!("the passwd entry of {name} has no uid"))?, parse(3).unwrap_or(0))
        }
    };
    let gid = match group_name {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => entry(group, g)
                .and_then(|f| f.get(2).and_then(|gid| gid.parse().ok()))
                .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file"))?,
        },
    };
    Ok((uid, gid))
}

fn entry_by_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&uid.to_string().as_str()))?
        .get(3)?
        .parse()
        .ok()
}

/// The spec, or why the container cannot be run as asked.
pub(crate) fn spec(inputs: &Inputs) -> Result<Value, String> {
    let args = argv(&inputs.image, inputs.command.clone(), inputs.args.clone());
    if args.is_empty() {
        return Err("no command specified: the pod gives none and the image has no entrypoint or cmd".into());
    }
    let mut env = merge_env(&inputs.image, &inputs.env);
    if !env.iter().any(|(name, _)| name == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let cwd = inputs.working_dir.clone().or_else(|| inputs.image.working_dir.clone()).filter(|d| !d.is_empty());
    let cwd = cwd.unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(format!("workingDir {cwd:?} is not an absolute path"));
    }
    let capabilities = capabilities(
        &inputs.add_capabilities,
        &inputs.drop_capabilities,
        &inputs.addable_capabilities,
        &inputs.withheld_capabilities,
    )?;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5", "max=1024"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        // Its own cgroup, read-only at its root (a cgroup namespace): runtimes such as the
        // JVM's and Go's size themselves by it.
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (source, destination, read_only) in &inputs.mounts {
        if !destination.starts_with('/') {
            return Err(format!("volume mount path {destination:?} is not an absolute path"));
        }
        // No device node in a volume opens a device: a container's devices are its runtime's,
        // in its own `/dev` (and where no device controller bounds them, one that a container
        // made before, or that a host path holds, would open the node's).
        let mut options = vec!["rbind", "rprivate", "nodev"];
        if *read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": destination, "type": "bind", "source": source, "options": options}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(limit) = inputs.memory_limit {
        resources["memory"] =
            if inputs.swap_limit { json!({"limit": limit, "swap": limit}) } else { json!({"limit": limit}) };
    }
    let mut cpu = json!({});
    if let Some(limit) = inputs.cpu_limit {
        // At least 1 ms of every period, as the kubelet's minimum quota.
        cpu["quota"] = json!(((limit * CPU_PERIOD as f64) as i64).max(1000));
        cpu["period"] = json!(CPU_PERIOD);
    }
    // The kubelet's shares: 1024 per core requested, at least 2.
    let shares = inputs.cpu_request.or(inputs.cpu_limit).map_or(2, |cores| ((cores * 1024.0) as u64).max(2));
    cpu["shares"] = json!(shares);
    resources["cpu"] = cpu;
    if let Some(pids) = inputs.pids_limit {
        resources["pids"] = json!({"limit": pids});
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "annotations": {
            POD_UID: inputs.labels.pod_uid,
            CONTAINER_NAME: inputs.labels.container,
            RESTART_COUNT: inputs.labels.attempt.to_string(),
        },
        // No `rlimits`: the container inherits the agent's, as containerd's default spec does.
        "process": {
            "terminal": false,
            "user": {"uid": inputs.user.0, "gid": inputs.user.1},
            "args": args,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": cwd,
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
        },
        "root": {"path": inputs.rootfs, "readonly": inputs.read_only_root},
        "mounts": mounts,
        "linux": {
            "cgroupsPath": inputs.cgroup,
            "resources": resources,
            "namespaces": [
                match &inputs.pid_ns {
                    Some(path) => json!({"type": "pid", "path": path}),
                    None => json!({"type": "pid"}),
                },
                {"type": "mount"},
                {"type": "network", "path": inputs.network_ns},
                {"type": "uts", "path": inputs.uts_ns},
                {"type": "ipc", "path": inputs.ipc_ns},
                {"type": "cgroup"},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    });
    // Set only when true: libcontainer takes `false` as set too, and then loads the seccomp
    // filter after the capabilities are dropped, where the kernel refuses it without
    // `no_new_privs`.
    if inputs.no_new_privileges {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    if inputs.seccomp {
        spec["linux"]["seccomp"] = super::seccomp::runtime_default(&capabilities);
    }
    Ok(spec)
}

/// The default set with `add` added (of the default set and `addable`) and `drop` taken away
/// (`ALL` drops every one), upstream's names without the `CAP_` prefix accepted.
fn capabilities(
    add: &[String],
    drop: &[String],
    addable: &[String],
    withheld: &[String],
) -> Result<Vec<String>, String> {
    let name = |c: &String| -> Result<String, String> {
        let upper = c.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
        if full[4..].chars().all(|c| c.is_ascii_uppercase() || c == '_') && full.len() > 4 {
            Ok(full)
        } else {
            Err(format!("capability {c:?} is not a capability's name"))
        }
    };
    let mut set: Vec<String> = if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        Vec::new()
    } else {
        let dropped = drop.iter().map(name).collect::<Result<Vec<_>, _>>()?;
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).filter(|c| !dropped.contains(c)).collect()
    };
    for cap in add {
        if cap.eq_ignore_ascii_case("ALL") {
            return Err("capabilities.add: ALL is a privileged container's, which this node does not run".into());
        }
        let cap = name(cap)?;
        if withheld.contains(&cap) {
            return Err(format!("capabilities.add: {cap} is not allowed on this node"));
        }
        if !DEFAULT_CAPABILITIES.contains(&cap.as_str()) && !addable.contains(&cap) {
            return Err(format!(
                "capabilities.add: {cap} is not allowed on this node (it may add {})",
                addable.join(", ")
            ));
        }
        if !set.contains(&cap) {
            set.push(cap);
        }
    }
    set.retain(|cap| !withheld.contains(cap));
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            image: RunConfig {
                entrypoint: None,
                cmd: Some(vec!["sh".into()]),
                env: Some(vec!["PATH=/bin".into(), "HOME=/root".into()]),
                ..Default::default()
            },
            rootfs: "/run/c/rootfs".into(),
            network_ns: "/run/p/net".into(),
            uts_ns: "/run/p/uts".into(),
            ipc_ns: "/run/p/ipc".into(),
            cgroup: "/flotilla/besteffort/podu/c1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_run_says_whose_it_is() {
        let mut inputs = inputs();
        inputs.labels = RunLabels { pod_uid: "u-1".into(), container: "app".into(), attempt: 3 };
        let spec = spec(&inputs).unwrap();
        assert_eq!(spec["annotations"]["io.kubernetes.container.restartCount"], "3", "as the kubelet writes it");
        assert_eq!(RunLabels::of(&spec), Some(inputs.labels));
        // A spec made before runs said whose they are (an earlier agent's) says nothing.
        assert_eq!(RunLabels::of(&json!({"process": {}})), None);
    }

    #[test]
    fn a_busybox_container_runs_the_pods_command_in_the_pods_namespaces() {
        let mut inputs = inputs();
        inputs.command = Some(vec!["sh".into(), "-c".into()]);
        inputs.args = Some(vec!["echo hi; exit 3".into()]);
        inputs.env = vec![("HOME".into(), "/home".into())];
        inputs.mounts = vec![("/proc/1/fd/7".into(), "/data".into(), true)];
        let spec = spec(&inputs).unwrap();
        assert_eq!(spec["process"]["args"], json!(["sh", "-c", "echo hi; exit 3"]));
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "HOME=/home"]));
        assert_eq!(spec["process"]["cwd"], "/");
        assert_eq!(spec["linux"]["namespaces"][2], json!({"type": "network", "path": "/run/p/net"}));
        assert_eq!(spec["linux"]["namespaces"][0], json!({"type": "pid"}), "each container has its own PIDs");
        inputs.pid_ns = Some("/run/p/pid".into());
        let shared = super::spec(&inputs).unwrap();
        assert_eq!(
            shared["linux"]["namespaces"][0],
            json!({"type": "pid", "path": "/run/p/pid"}),
            "shareProcessNamespace"
        );
        let data = spec["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["options"], json!(["rbind", "rprivate", "nodev", "ro"]));
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 2, "BestEffort gets the minimum weight");
        // The JSON is the runtime spec youki reads.
        let parsed: libcontainer::oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
        assert_eq!(parsed.process().as_ref().unwrap().args().as_ref().unwrap()[0], "sh");
    }

    #[test]
    fn limits_become_cgroup_settings_as_the_kubelets() {
        let mut inputs = inputs();
        inputs.memory_limit = Some(64 << 20);
        inputs.swap_limit = true;
        inputs.cpu_limit = Some(0.25);
        inputs.cpu_request = Some(0.1);
        inputs.pids_limit = Some(100);
        let resources = &spec(&inputs).unwrap()["linux"]["resources"];
        assert_eq!(resources["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}), "no swap beyond the limit");
        assert_eq!(resources["cpu"]["quota"], 25_000);
        assert_eq!(resources["cpu"]["period"], 100_000);
        assert_eq!(resources["cpu"]["shares"], 102);
        assert_eq!(resources["pids"]["limit"], 100);
        inputs.swap_limit = false;
        let resources = &spec(&inputs).unwrap()["linux"]["resources"];
        assert_eq!(resources["memory"], json!({"limit": 64 << 20}), "no swap setting where swap is not accounted");
    }

    #[test]
    fn capabilities_and_privileges_are_upstreams() {
        let mut inputs = inputs();
        inputs.drop_capabilities = vec!["NET_RAW".into(), "cap_kill".into()];
        inputs.add_capabilities = vec!["NET_ADMIN".into()];
        inputs.addable_capabilities = vec!["CAP_NET_ADMIN".into()];
        inputs.no_new_privileges = true;
        inputs.read_only_root = true;
        let spec = spec(&inputs).unwrap();
        let caps: Vec<String> = serde_json::from_value(spec["process"]["capabilities"]["bounding"].clone()).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".into()) && caps.contains(&"CAP_CHOWN".into()));
        assert!(!caps.contains(&"CAP_NET_RAW".into()) && !caps.contains(&"CAP_KILL".into()));
        assert!(!caps.contains(&"CAP_SYS_ADMIN".into()));
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["root"]["readonly"], true);
        assert!(spec["linux"]["seccomp"].is_null(), "unconfined");
        inputs.no_new_privileges = false;
        assert!(super::spec(&inputs).unwrap()["process"]["noNewPrivileges"].is_null(), "not written when false");
        inputs.seccomp = true;
        let profile = &super::spec(&inputs).unwrap()["linux"]["seccomp"];
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        inputs.seccomp = false;
        inputs.drop_capabilities = vec!["ALL".into()];
        inputs.add_capabilities = vec![];
        assert_eq!(super::spec(&inputs).unwrap()["process"]["capabilities"]["bounding"], json!([]));
        inputs.add_capabilities = vec!["ALL".into()];
        assert!(super::spec(&inputs).is_err());
        inputs.add_capabilities = vec!["NET ADMIN; rm".into()];
        assert!(super::spec(&inputs).is_err());
        // With no user namespace (and seccomp a pod may turn off), these would reach the host.
        for escape in ["SYS_ADMIN", "SYS_MODULE", "DAC_READ_SEARCH", "SYS_PTRACE", "BPF"] {
            inputs.add_capabilities = vec![escape.into()];
            let err = super::spec(&inputs).unwrap_err();
            assert!(err.contains("is not allowed on this node"), "{escape}: {err}");
        }
        // Withheld by the node (CAP_MKNOD where no device controller bounds a device node):
        // gone from the default set, and refused when asked for.
        inputs.drop_capabilities = vec![];
        inputs.add_capabilities = vec![];
        inputs.withheld_capabilities = vec!["CAP_MKNOD".into()];
        let caps = super::spec(&inputs).unwrap()["process"]["capabilities"]["bounding"].clone();
        let caps: Vec<String> = serde_json::from_value(caps).unwrap();
        assert!(!caps.contains(&"CAP_MKNOD".into()) && caps.contains(&"CAP_CHOWN".into()), "{caps:?}");
        inputs.add_capabilities = vec!["MKNOD".into()];
        assert!(super::spec(&inputs).unwrap_err().contains("CAP_MKNOD is not allowed on this node"));
    }

    #[test]
    fn no_command_and_relative_paths_are_refused_with_a_reason() {
        let mut inputs = inputs();
        inputs.image = RunConfig::default();
        assert!(spec(&inputs).unwrap_err().contains("no command specified"));
        let mut inputs = super::tests::inputs();
        inputs.working_dir = Some("data".into());
        assert!(spec(&inputs).unwrap_err().contains("not an absolute path"));
    }

    #[test]
    fn image_users_are_looked_up_as_runc_looks_them_up() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nwww:x:33:33::/:/bin/false\n";
        let group = "root:x:0:\nwww-data:x:33:\nstaff:x:50:\n";
        assert_eq!(image_user("", passwd, group), Ok((0, 0)));
        assert_eq!(image_user("nobody", passwd, group), Ok((65534, 65534)));
        assert_eq!(image_user("33", passwd, group), Ok((33, 33)));
        assert_eq!(image_user("1000", passwd, group), Ok((1000, 0)));
        assert_eq!(image_user("www:staff", passwd, group), Ok((33, 50)));
        assert_eq!(image_user("1000:1000", passwd, group), Ok((1000, 1000)));
        assert!(image_user("ghost", passwd, group).unwrap_err().contains("unable to find user ghost"));
    }
}
