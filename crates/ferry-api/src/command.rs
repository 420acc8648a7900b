//! The command vocabulary. Each command is declared once, below: its word,
//! its area, its documentation and its typed arguments. From that one
//! declaration come the typed [`Command`] enum, the parser used by the CLI
//! and by the broker agent, and the help text.

use std::path::PathBuf;

use ferry_core::{Jname, NameSelector};

use crate::args::{
    ArgError, ArgReader, Default, Given, HookPath, Optional, RawArgs, Required, Rest, Rule,
    Suffixed, Word,
};
pub use crate::policy::Policy;
pub use crate::values::{
    BaseFrom, BaseMode, CheckpointMode, DiskController, DiskMode, IfName, ImageMode, ImgType,
    NicKind, NodeList, NodeMode, SizeChange, SnapshotMode, TaskAutoflush, TaskMode,
};
use crate::values::{Ip4List, Size};
use std::collections::BTreeMap;

pub use spec::{Area, ArgSpec, CommandSpec};

mod spec;

#[macro_use]
mod declare;

/// Why a task may not run the queue's own commands.
const THE_QUEUE_S_OWN: &str = "it is the task queue's own";

commands! {
    /// Create or update the workdir: layout, shared-dir ids, registry, node inventory.
    /// Non-interactive and idempotent: a re-run keeps ids, data and registry.
    /// The workdir comes from --workdir, else $workdir, else /usr/jails.
    Initenv(InitenvArgs) = "initenv" in Setup, listing = false,
        policy(|_| Policy::ACTS) {
        /// This node's name (default: the current one, else the host name).
        nodename: Option<Jname> = Optional,
        /// The broker of the cluster (host:port or beanstalk://host:port),
        /// kept in etc/broker.conf; without one the node works alone.
        broker: Option<String> = Optional,
        /// The QEMU this node runs VMs with (an absolute path), kept in
        /// etc/qemu.conf; without one, qemu-system-ARCH from PATH.
        qemu: Option<PathBuf> = Optional,
        /// Where jcreate pkglist= takes packages from: an http(s) Debian
        /// mirror or an absolute dir holding a flat repository (0: the
        /// base's own apt sources), kept in etc/pkg.conf.
        pkg_mirror: Option<String> = Optional,
    }

    /// Create, list or remove local read-only bases for jails.
    /// A base is built from Debian's busybox-static or copied from a directory
    /// tree (e.g. a debootstrap). Removing a base some jail uses is refused.
    Base(BaseArgs) = "base" in Setup, listing = true,
        policy(|a: &BaseArgs| Policy::reads_if(a.mode == BaseMode::List)) {
        /// create, list or remove.
        mode: BaseMode = Default("list"),
        /// The base's name (create, remove).
        name: Option<Jname> = Optional,
        /// busybox or dir (create).
        from: BaseFrom = Default("busybox"),
        /// The directory tree to copy (from=dir) or the busybox binary (from=busybox).
        path: Option<PathBuf> = Optional,
        /// Comma-separated columns to show (CBSD's display=).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0).
        header: bool = Default("1"),
    }

    /// Create a jail: its definition, data dir and registry row on this node.
    Jcreate(JcreateArgs) = "jcreate" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail's name.
        jname: Jname = Required,
        /// The local base its root is built from.
        base: Jname = Default("busybox"),
        /// 0: the base is mounted read-only and only etc, home, root, tmp, var
        /// are the jail's own; 1: the whole root is the jail's own copy.
        baserw: bool = Default("0"),
        /// The jail's host name (default: its name).
        host_hostname: Option<String> = Optional,
        /// Addresses in the jail's own network namespace, or 0 for loopback only.
        ip4_addr: Ip4List = Default("0"),
        /// The bridge the jail's veth is attached to (created if missing).
        interface: IfName = Default("ferry0"),
        /// Default route inside the jail.
        defaultrouter: Option<std::net::Ipv4Addr> = Optional,
        /// The command the jail runs, split into words (never evaluated by a shell).
        exec_start: String = Default("/bin/sh /etc/rc"),
        /// Start the jail when the node daemon starts.
        astart: bool = Default("0"),
        /// Protected by HA: when its node dies, another node takes it over and
        /// starts it (docs/cluster.md).
        ha: bool = Default("0"),
        /// The nodes HA may move it to, comma-separated (0: any live node).
        ha_nodes: NodeList = Default("0"),
        /// How many failovers and restarts HA makes in an hour before it gives up.
        ha_max_restart: u32 = Default("3"),
        /// Hook run before the jail's data is touched.
        mnt_start: HookPath = Default("0"),
        /// Hook run after the jail stopped.
        mnt_stop: HookPath = Default("0"),
        /// Seconds a hook may run before its process group is killed (0: no limit).
        mnt_timeout: u64 = Default("60"),
        /// Seconds jstop waits after SIGTERM before SIGKILL.
        stop_timeout: u64 = Default("10"),
        /// The jail profile whose settings fill in what is not given
        /// (CBSD's jail_profile): $workdir/etc/profiles/jail-NAME.conf, else
        /// the one ferry ships.
        jail_profile: Word = Default("default"),
        /// Packages to install into the jail at create time (CBSD's pkglist),
        /// space-separated; needs a base with a package manager.
        pkglist: Option<String> = Optional,
        /// Start the jail right after creating it.
        runasap: bool = Default("0"),
    }

    /// Start jails.
    Jstart(JstartArgs) = "jstart" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail, or a quoted glob such as 'web*'.
        jname: NameSelector = Required,
    }

    /// Stop jails: SIGTERM, SIGKILL after stop_timeout, then mnt_stop.
    Jstop(JstopArgs) = "jstop" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail, or a quoted glob such as 'web*'.
        jname: NameSelector = Required,
    }

    /// Restart jails (a stopped jail is just started).
    Jrestart(JrestartArgs) = "jrestart" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail, or a quoted glob such as 'web*'.
        jname: NameSelector = Required,
    }

    /// Remove stopped jails: definition, data, system dir, fstab and registry row.
    Jremove(JremoveArgs) = "jremove" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail, or a quoted glob such as 'web*'.
        jname: NameSelector = Required,
    }

    /// List the jails registered on this node, with their live state.
    Jls(JlsArgs) = "jls" in Jails, listing = true,
        policy(|_| Policy::READS) {
        /// Only jails matching this name or glob.
        jname: NameSelector = Default("*"),
        /// Comma-separated columns to show (CBSD's display=).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0).
        header: bool = Default("1"),
    }

    /// Clone a stopped jail into a new one (CBSD's jclone): its data copied
    /// (holes kept, reflinked where the file system can) unless a
    /// clone-local.d hook made the copy; a new name, host name and lease.
    Jclone(JcloneArgs) = "jclone" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The stopped jail to copy.
        old: Jname = Required,
        /// The new jail's name.
        new: Jname = Required,
        /// The new jail's host name (default: its name).
        host_hostname: Option<String> = Optional,
        /// The new jail's addresses (default: the old one's).
        ip4_addr: Option<Ip4List> = Optional,
    }

    /// Rename a stopped jail (CBSD's jrename): its files, definition, lease
    /// and registry row, journaled so that a crash is finished, not lost.
    Jrename(JrenameArgs) = "jrename" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail's name now.
        old: Jname = Required,
        /// Its new name.
        new: Jname = Required,
        /// A new host name (default: kept).
        host_hostname: Option<String> = Optional,
        /// New addresses (default: kept).
        ip4_addr: Option<Ip4List> = Optional,
        /// 1: a running jail is stopped, renamed and started again.
        restart: bool = Default("0"),
    }

    /// Export a stopped jail into one archive (CBSD's jexport):
    /// dstdir/<jname>.img, zstd-compressed, every file checksummed, and
    /// <jname>.img.sha256 beside it. The jail stays as it is.
    Jexport(JexportArgs) = "jexport" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The stopped jail.
        jname: Jname = Required,
        /// Absolute dir the archive goes to (default: $workdir/export).
        dstdir: Option<PathBuf> = Optional,
        /// zstd level, 1 to 19; 0: no compression.
        compress: u32 = Default("6"),
    }

    /// Make a jail of an archive jexport wrote (CBSD's jimport), under its
    /// own name or new_jname; every file is checked against the archive's
    /// checksums, and a failure leaves nothing.
    Jimport(JimportArgs) = "jimport" in Jails, listing = false,
        policy(|a: &JimportArgs| if a.jname.contains('/') {
            Policy::ACTS.not_over_broker("a broker job may not read a file of this node's by path; put the archive in $workdir/import and name it")
        } else {
            Policy::ACTS
        }) {
        /// The archive: a path, or a name in $workdir/import (NAME.img).
        jname: String = Required,
        /// The new jail's name (default: the exported one's).
        new_jname: Option<Jname> = Optional,
        /// The new jail's host name (default: the exported one's).
        new_host_hostname: Option<String> = Optional,
        /// The new jail's addresses (default: the exported one's).
        new_ip4_addr: Option<Ip4List> = Optional,
    }

    /// Change settings of registered jails (CBSD's jset), with jcreate's
    /// validation; says which take effect only at the next start.
    Jset(JsetArgs) = "jset" in Jails, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail, or a quoted glob such as 'web*'.
        jname: NameSelector = Required,
        /// The jail's host name.
        host_hostname: Option<String> = Optional,
        /// Addresses in the jail's own network namespace, or 0 for loopback only.
        ip4_addr: Option<Ip4List> = Optional,
        /// The bridge the jail's veth is attached to.
        interface: Option<IfName> = Optional,
        /// Default route inside the jail.
        defaultrouter: Option<std::net::Ipv4Addr> = Optional,
        /// The command the jail runs, split into words (never evaluated by a shell).
        exec_start: Option<String> = Optional,
        /// Start the jail when the node daemon starts.
        astart: Option<bool> = Optional,
        /// Protected by HA: when its node dies, another node takes it over and
        /// starts it.
        ha: Option<bool> = Optional,
        /// The nodes HA may move it to, comma-separated (0: any live node).
        ha_nodes: Option<NodeList> = Optional,
        /// How many failovers and restarts HA makes in an hour before it gives up.
        ha_max_restart: Option<u32> = Optional,
        /// Hook run before the jail's data is touched.
        mnt_start: Option<HookPath> = Optional,
        /// Hook run after the jail stopped.
        mnt_stop: Option<HookPath> = Optional,
        /// Seconds a hook may run before its process group is killed (0: no limit).
        mnt_timeout: Option<u64> = Optional,
        /// Seconds jstop waits after SIGTERM before SIGKILL.
        stop_timeout: Option<u64> = Optional,
    }

    /// Print settings of a registered jail (CBSD's jget): `key: value`
    /// lines, the keys named as trailing words, or all of them.
    Jget(JgetArgs) = "jget" in Jails, listing = false,
        policy(|_| Policy::READS) {
        /// The jail.
        jname: Jname = Required,
        /// The keys to print (all when none).
        keys: Vec<String> = Rest,
    }

    /// Run a command inside a running jail; exits with the command's status.
    Jexec(JexecArgs) = "jexec" in Jails, listing = false,
        policy(|_| Policy::ACTS.not_over_broker("its output goes to a terminal; queue it with task mode=new")) {
        /// The jail.
        jname: Jname = Required,
        /// The command and its arguments.
        cmd: Vec<String> = Rest,
    }

    /// Create a VM: its definition, disk images and registry row on this node.
    Bcreate(BcreateArgs) = "bcreate" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM's name.
        jname: Jname = Required,
        /// Memory, e.g. 512m or 2g (at least 16m).
        vm_ram: Size = Default("1g"),
        /// Virtual CPUs (1 to 255).
        vm_cpus: u32 = Default("1"),
        /// Guest OS family (informational, like CBSD's).
        vm_os_type: Word = Default("linux"),
        /// Size of the first disk dsk1 (0: no disk).
        imgsize: Size = Default("10g"),
        /// Disk image format: qcow2 (checkpoints need it) or raw.
        imgtype: ImgType = Default("qcow2"),
        /// Kernel for direct kernel boot (instead of booting from dsk1).
        vm_kernel: Option<PathBuf> = Optional,
        /// Initrd for direct kernel boot.
        vm_initrd: Option<PathBuf> = Optional,
        /// Kernel command line for direct kernel boot.
        vm_cmdline: String = Default("console=ttyS0"),
        /// NIC: bridge (a tap on `interface`, as CBSD's), user (QEMU's
        /// user-mode networking, out through the host) or none.
        vm_nic: NicKind = Default("bridge"),
        /// The bridge the tap is attached to (vm_nic=bridge; created if missing).
        interface: IfName = Default("ferry0"),
        /// VNC console port on 127.0.0.1 (5900 and up; 0: none).
        vm_vnc_port: u16 = Default("0"),
        /// CPU model the guest sees: a named model both nodes of a migration offer, not host.
        vm_cpu_model: Word = Default("qemu64"),
        /// QEMU machine type; an alias such as q35 is pinned to its versioned type at create.
        vm_machine: Word = Default("q35"),
        /// Start the VM when the node daemon starts.
        astart: bool = Default("0"),
        /// Protected by HA: when its node dies, another node takes it over and
        /// starts it (docs/cluster.md).
        ha: bool = Default("0"),
        /// The nodes HA may move it to, comma-separated (0: any live node).
        ha_nodes: NodeList = Default("0"),
        /// How many failovers and restarts HA makes in an hour before it gives up.
        ha_max_restart: u32 = Default("3"),
        /// Hook run before the VM's data is touched.
        mnt_start: HookPath = Default("0"),
        /// Hook run after the VM stopped.
        mnt_stop: HookPath = Default("0"),
        /// Seconds a hook may run before its process group is killed (0: no limit).
        mnt_timeout: u64 = Default("60"),
        /// Seconds bstop waits for an ACPI power-down before stopping QEMU hard.
        stop_timeout: u64 = Default("30"),
        /// Start the VM right after creating it.
        runasap: bool = Default("0"),
        /// A VM profile (CBSD's vm_os_profile, e.g. cloud-Debian-x86-12):
        /// the image dsk1 is made from and defaults for the other keys.
        vm_os_profile: Option<Word> = Optional,
        /// The guest's host name, given by cloud-init (default: its name).
        host_hostname: Option<String> = Optional,
        /// The guest's address, ADDR[/PREFIX] (prefix 24 when left out) or
        /// DHCP, given by cloud-init.
        ci_ip4_addr: Option<String> = Optional,
        /// The guest's default gateway (cloud-init; auto: none set).
        ci_gw4: Option<String> = Optional,
        /// Name servers for the guest, separated by commas or spaces.
        ci_nameserver_address: Option<String> = Optional,
        /// DNS search domains for the guest, separated by commas or spaces.
        ci_nameserver_search: Option<String> = Optional,
        /// The host bridge of the guest's NIC (CBSD's name for interface=).
        ci_interface: Option<IfName> = Optional,
        /// The guest's NIC name without its number (default eth: eth0).
        ci_interface_name: Option<Word> = Optional,
        /// The user cloud-init makes (default: the profile's).
        ci_user_add: Option<Word> = Optional,
        /// That user's SSH public key.
        ci_user_pubkey: Option<String> = Optional,
        /// An SSH public key by user name: ci_user_pubkey_<user>=.
        ci_user_pubkey_: BTreeMap<String, String> = Suffixed,
        /// root's password; kept only as a SHA-512 crypt hash (* locks it).
        ci_user_pw_root: Option<String> = Optional,
        /// The user's password; kept only as a hash (* locks it).
        ci_user_pw_user: Option<String> = Optional,
    }

    /// Start VMs (optionally restoring a checkpoint).
    Bstart(BstartArgs) = "bstart" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM, or a quoted glob such as 'vm*'.
        jname: NameSelector = Required,
        /// Restore this checkpoint instead of booting.
        checkpoint: Option<Word> = Optional,
    }

    /// Stop VMs: ACPI power-down, then a hard stop after stop_timeout, then mnt_stop.
    Bstop(BstopArgs) = "bstop" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM, or a quoted glob such as 'vm*'.
        jname: NameSelector = Required,
    }

    /// Restart VMs (a stopped VM is just started).
    Brestart(BrestartArgs) = "brestart" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM, or a quoted glob such as 'vm*'.
        jname: NameSelector = Required,
    }

    /// Remove stopped VMs: definition, disks, checkpoints and registry row.
    Bremove(BremoveArgs) = "bremove" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM, or a quoted glob such as 'vm*'.
        jname: NameSelector = Required,
    }

    /// List the VMs registered on this node, with their state read from QEMU.
    Bls(BlsArgs) = "bls" in Vms, listing = true,
        policy(|_| Policy::READS) {
        /// Only VMs matching this name or glob.
        jname: NameSelector = Default("*"),
        /// Comma-separated columns to show (CBSD's display=).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0).
        header: bool = Default("1"),
    }

    /// Unregister stopped jails: their definition moves to jails-rcconf, their lease is released.
    /// Zero copy: data, system dir and fstab stay where they are.
    Junregister(JunregisterArgs) = "junregister" in Shared, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail, or a quoted glob such as 'web*'.
        jname: NameSelector = Required,
    }

    /// Register unregistered jails on this node, taking their owner lease.
    Jregister(JregisterArgs) = "jregister" in Shared, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail, or a quoted glob such as 'web*' (matched in jails-rcconf).
        jname: NameSelector = Required,
        /// Take over from an owner node whose heartbeat stays still for lease_time.
        force: bool = Default("0"),
        /// Seconds an owner's heartbeat must stay still before force=1 takes over.
        lease_time: u64 = Default("30"),
    }

    /// Unregister stopped VMs: their definition moves to jails-rcconf, their lease is released.
    Bunregister(BunregisterArgs) = "bunregister" in Shared, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM, or a quoted glob such as 'vm*'.
        jname: NameSelector = Required,
    }

    /// Register unregistered VMs on this node, taking their owner lease.
    Bregister(BregisterArgs) = "bregister" in Shared, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM, or a quoted glob such as 'vm*' (matched in jails-rcconf).
        jname: NameSelector = Required,
        /// Take over from an owner node whose heartbeat stays still for lease_time.
        force: bool = Default("0"),
        /// Seconds an owner's heartbeat must stay still before force=1 takes over.
        lease_time: u64 = Default("30"),
    }

    /// Live-migrate a running VM to another node over shared storage: all
    /// prechecks at once, the destination prepared through its daemon, the
    /// memory sent over QMP with a downtime limit, then the lease handed
    /// over. Any failure before the handover leaves it running here.
    Bmigrate(BmigrateArgs) = "bmigrate" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM (one name, no glob).
        jname: Jname = Required,
        /// The node to move it to (added with node mode=add, alive).
        node: Jname = Required,
        /// 1: run the prechecks only.
        check: bool = Default("0"),
        /// The longest the guest may be stopped for the last pass, in ms.
        downtime_ms: u64 = Default("300"),
        /// MiB/s the transfer may use; 0 for no limit.
        bandwidth: u64 = Default("0"),
        /// Seconds the transfer may take before it is cancelled.
        timeout: u64 = Default("600"),
        /// Seconds a heartbeat must stay still for its node to count as dead.
        lease_time: u64 = Default("30"),
        /// 1: move even with a QEMU known to corrupt guests in live migration.
        force: bool = Default("0"),
        /// Ms the destination watches the moved guest (run state, console faults).
        verify_ms: u64 = Default("1000"),
    }

    /// Move a jail to another node cold, with zero data copy: stop it (if it
    /// runs), unregister it here, register (and start) it there through a
    /// task over the broker. Any failure there brings it back here as it was.
    Jmigrate(JmigrateArgs) = "jmigrate" in Shared, listing = false,
        policy(|_| Policy::ACTS) {
        /// The jail (one name, no glob).
        jname: Jname = Required,
        /// The node to move it to (added with node mode=add, alive).
        node: Jname = Required,
        /// Seconds to wait for the other node to take it.
        timeout: u64 = Default("60"),
        /// Seconds a heartbeat must stay still for its node to count as dead.
        lease_time: u64 = Default("30"),
    }

    /// The node daemon (cbsdd): beats this node's heartbeat and feeds the
    /// node's watchdog after each beat (the watchdog kills every env here when
    /// no beat came for fence_time), stops envs whose lease another node took
    /// (self-fencing), starts astart envs. Runs until SIGTERM or SIGINT.
    Daemon(DaemonArgs) = "daemon" in Cluster, listing = false,
        policy(|_| Policy::ACTS
            .not_queueable("it runs until stopped")
            .not_over_broker("it runs until stopped; start it as a service")) {
        /// Seconds between heartbeats and lease checks.
        heartbeat: u64 = Default("2"),
        /// Seconds a node's heartbeat must stand still for other nodes to take
        /// its envs over (the same on every node).
        lease_time: u64 = Default("30"),
        /// Seconds without a heartbeat after which the watchdog kills every env
        /// of this node; shorter than lease_time by at least 1 (0: two thirds
        /// of lease_time).
        fence_time: u64 = Default("0"),
        /// How many queued tasks this daemon runs at once (0: it runs none).
        tasks: u32 = Default("2"),
    }

    /// The node's fencing watchdog, started and fed by `ferry daemon` (internal):
    /// kills every env of this node when the daemon's feed stops for fence_time.
    Watchdog(WatchdogArgs) = "watchdog" in Cluster, listing = false,
        policy(|_| Policy::ACTS
            .not_queueable("it runs as long as its daemon")
            .not_over_broker("the node daemon starts it")) {
        /// Seconds without a feed after which every env here is killed.
        fence_time: u64 = Required,
    }

    /// The local task queue (CBSD's task): queue, list, cancel or flush deferred commands.
    /// The node daemon runs each queued ferry command in its own process, its
    /// output in var/log/tasks/ID.log.
    /// mode=new queues the ferry command given as the trailing words
    /// (e.g. `ferry task mode=new after=3 jstart jname=web1`) and prints its id;
    /// mode=list lists the tasks; mode=cancel cancels a pending task, or stops a
    /// running one; mode=flush removes finished records (all, or id=).
    /// mode=run is internal: the daemon's runner of one claimed task.
    Task(TaskArgs) = "task" in Cluster, listing = true,
        policy(|a: &TaskArgs| match a.mode {
            TaskMode::Run => Policy::ACTS
                .not_queueable(THE_QUEUE_S_OWN)
                .not_over_broker("mode=run is the task runner's own"),
            TaskMode::List => Policy::READS.not_queueable(THE_QUEUE_S_OWN),
            _ => Policy::ACTS.not_queueable(THE_QUEUE_S_OWN),
        }) {
        /// new, list, cancel, flush (or run, internal to the daemon).
        mode: TaskMode = Default("list"),
        /// The task (cancel, flush, run).
        id: Option<u64> = Optional,
        /// The node to run on (new; default: this node).
        node: Option<Jname> = Optional,
        /// A task that must finish successfully first (new); if it does not,
        /// this one is cancelled.
        after: Option<u64> = Optional,
        /// 0 keep the record, 1 remove it once done, 2 remove it once finished (new).
        autoflush: TaskAutoflush = Default("0"),
        /// 1: run again if the run was interrupted (its runner died), up to 3 runs (new).
        retry: bool = Default("0"),
        /// The run number a runner is started for (internal, mode=run).
        run: Option<u32> = Optional,
        /// Comma-separated columns to show (list).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0; list).
        header: bool = Default("1"),
        /// The ferry command to queue, word by word (new).
        cmd: Vec<String> = Rest,
    }

    /// The nodes of the cluster (CBSD's node). mode=add asks the node, over
    /// the broker, for its inventory and records it here (no SSH keys are
    /// copied anywhere); mode=list shows every added or beating node: alive
    /// or dead from its heartbeat as watched by this node's daemon, its
    /// inventory, and how many envs it owns; mode=remove forgets a node,
    /// refused while it owns envs unless force=1. mode=evacuate (run on the
    /// node to empty) holds this node in maintenance, so nothing lands here,
    /// and moves every env away by HA's placement: running VMs live
    /// (bmigrate), the others cold; mode=restore ends the maintenance and
    /// brings them back.
    Node(NodeArgs) = "node" in Cluster, listing = true,
        policy(|a: &NodeArgs| Policy::reads_if(a.mode == NodeMode::List)) {
        /// add, list, remove, evacuate or restore.
        mode: NodeMode = Default("list"),
        /// The node (add, remove; evacuate and restore: this node, the default).
        node: Option<Jname> = Optional,
        /// Remove a node that still owns envs (remove).
        force: bool = Default("0"),
        /// Seconds a heartbeat must stay still for its node to count as dead (list).
        lease_time: u64 = Default("30"),
        /// Seconds to wait for the node's answer (add).
        timeout: u64 = Default("10"),
        /// Comma-separated columns to show (list).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0).
        header: bool = Default("1"),
    }

    /// The envs protected by HA (ha=1) in the pool: where each runs, whether
    /// its node is alive as this node's daemon watched it, how many failovers
    /// and restarts HA made in the last hour, and the last one: from where to
    /// where, when, how long from the fault to running, and its result.
    Ha(HaArgs) = "ha" in Cluster, listing = true,
        policy(|_| Policy::READS) {
        /// Seconds a heartbeat must stay still for its node to count as dead.
        lease_time: u64 = Default("30"),
        /// Comma-separated columns to show.
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0).
        header: bool = Default("1"),
    }

    /// List the local task queue (the same as `task mode=list`).
    Taskls(TasklsArgs) = "taskls" in Cluster, listing = true,
        policy(|_| Policy::READS.not_queueable(THE_QUEUE_S_OWN)) {
        /// Comma-separated columns to show (CBSD's display=).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0).
        header: bool = Default("1"),
    }

    /// Clone a stopped VM into a new one (CBSD's bclone): its disks copied
    /// (holes kept, reflinked where the file system can) unless a
    /// clone-local.d hook made the copy; a new name, MAC and lease.
    Bclone(BcloneArgs) = "bclone" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The stopped VM to copy.
        old: Jname = Required,
        /// The new VM's name.
        new: Jname = Required,
        /// 1: a new MAC (ferry's MAC follows the name, so always; 0 is refused).
        mac_reinit: bool = Default("1"),
        /// The new VM's VNC port (default 0: none; a port serves one VM).
        vm_vnc_port: Option<u16> = Optional,
    }

    /// Rename a stopped VM (CBSD's brename): its disks, definition, lease,
    /// checkpoints and registry row, journaled like jrename. Its MAC
    /// follows its name, so it changes.
    Brename(BrenameArgs) = "brename" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM's name now.
        old: Jname = Required,
        /// Its new name.
        new: Jname = Required,
        /// 1: a running VM is stopped, renamed and started again.
        restart: bool = Default("0"),
    }

    /// Export a stopped VM into one archive (CBSD's bexport): its
    /// definition, disks, snapshots and checkpoints, as jexport does.
    Bexport(BexportArgs) = "bexport" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The stopped VM.
        jname: Jname = Required,
        /// Absolute dir the archive goes to (default: $workdir/export).
        dstdir: Option<PathBuf> = Optional,
        /// zstd level, 1 to 19; 0: no compression.
        compress: u32 = Default("6"),
    }

    /// Make a VM of an archive bexport wrote (CBSD's bimport), as jimport
    /// does; a VNC port used here is refused.
    Bimport(BimportArgs) = "bimport" in Vms, listing = false,
        policy(|a: &BimportArgs| if a.jname.contains('/') {
            Policy::ACTS.not_over_broker("a broker job may not read a file of this node's by path; put the archive in $workdir/import and name it")
        } else {
            Policy::ACTS
        }) {
        /// The archive: a path, or a name in $workdir/import (NAME.img).
        jname: String = Required,
        /// The new VM's name (default: the exported one's).
        new_jname: Option<Jname> = Optional,
    }

    /// Change settings of registered VMs (CBSD's bset), with bcreate's
    /// validation; says which take effect only at the next start.
    Bset(BsetArgs) = "bset" in Vms, listing = false,
        policy(|_| Policy::ACTS) {
        /// The VM, or a quoted glob such as 'vm*'.
        jname: NameSelector = Required,
        /// Memory, e.g. 512m or 2g (at least 16m).
        vm_ram: Option<Size> = Optional,
        /// Virtual CPUs (1 to 255).
        vm_cpus: Option<u32> = Optional,
        /// VNC console port on 127.0.0.1 (5900 and up; 0: none).
        vm_vnc_port: Option<u16> = Optional,
        /// Guest OS family (informational, like CBSD's).
        vm_os_type: Option<Word> = Optional,
        /// Kernel command line for direct kernel boot.
        vm_cmdline: Option<String> = Optional,
        /// Start the VM when the node daemon starts.
        astart: Option<bool> = Optional,
        /// Protected by HA: when its node dies, another node takes it over and
        /// starts it.
        ha: Option<bool> = Optional,
        /// The nodes HA may move it to, comma-separated (0: any live node).
        ha_nodes: Option<NodeList> = Optional,
        /// How many failovers and restarts HA makes in an hour before it gives up.
        ha_max_restart: Option<u32> = Optional,
        /// Hook run before the VM's data is touched.
        mnt_start: Option<HookPath> = Optional,
        /// Hook run after the VM stopped.
        mnt_stop: Option<HookPath> = Optional,
        /// Seconds a hook may run before its process group is killed (0: no limit).
        mnt_timeout: Option<u64> = Optional,
        /// Seconds bstop waits for an ACPI power-down before stopping QEMU hard.
        stop_timeout: Option<u64> = Optional,
        /// The guest's host name (cloud-init, at the next start).
        host_hostname: Option<String> = Optional,
        /// The guest's address, ADDR[/PREFIX] or DHCP (cloud-init).
        ci_ip4_addr: Option<String> = Optional,
        /// The guest's default gateway (cloud-init; auto: none).
        ci_gw4: Option<String> = Optional,
        /// Name servers for the guest (cloud-init).
        ci_nameserver_address: Option<String> = Optional,
        /// DNS search domains for the guest (cloud-init).
        ci_nameserver_search: Option<String> = Optional,
        /// The cloud-init user's SSH public key.
        ci_user_pubkey: Option<String> = Optional,
        /// root's password; kept only as a hash (* locks it).
        ci_user_pw_root: Option<String> = Optional,
        /// The cloud-init user's password; kept only as a hash.
        ci_user_pw_user: Option<String> = Optional,
    }

    /// Print settings of a registered VM (CBSD's bget): `key: value`
    /// lines, the keys named as trailing words, or all of them.
    Bget(BgetArgs) = "bget" in Vms, listing = false,
        policy(|_| Policy::READS) {
        /// The VM.
        jname: Jname = Required,
        /// The keys to print (all when none).
        keys: Vec<String> = Rest,
    }

    /// Snapshots of a VM's qcow2 disks (CBSD's bsnapshot): create, list,
    /// destroy, destroyall while it runs or not; rollback while it is
    /// stopped. snapname=gettimeofday names one by the time.
    Bsnapshot(BsnapshotArgs) = "bsnapshot" in Vms, listing = true,
        policy(|a: &BsnapshotArgs| Policy::reads_if(a.mode == SnapshotMode::List)) {
        /// create, list, destroy, destroyall or rollback.
        mode: SnapshotMode = Default("list"),
        /// The VM.
        jname: Jname = Required,
        /// The snapshot (create, destroy, rollback); gettimeofday: the time now.
        snapname: Option<Word> = Optional,
        /// Comma-separated columns to show (list).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0; list).
        header: bool = Default("1"),
    }

    /// The node's disk images VMs are made from (CBSD's fetch_iso idea):
    /// add one from a file or an http(s) URL (its SHA-256 checked), list,
    /// remove. Images are read-only; a VM's disk is an overlay on one.
    Image(ImageArgs) = "image" in Vms, listing = true,
        policy(|a: &ImageArgs| match (a.mode, &a.path) {
            (ImageMode::Add, Some(_)) => Policy::ACTS.not_over_broker(
                "a broker job may not read a file of this node's (path=); add the image from a url=",
            ),
            (mode, _) => Policy::reads_if(mode == ImageMode::List),
        }) {
        /// add, list or remove.
        mode: ImageMode = Default("list"),
        /// The image's name (add, remove).
        name: Option<Jname> = Optional,
        /// A local file to add.
        path: Option<PathBuf> = Optional,
        /// An http(s) URL to add from.
        url: Option<String> = Optional,
        /// The SHA-256 the image must have (64 hex digits).
        sha256: Option<String> = Optional,
        /// Comma-separated columns to show (list).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0; list).
        header: bool = Default("1"),
    }

    /// A VM's disks (CBSD's bhyve-dsk): attach a new or detached one,
    /// detach, delete, grow (dsk_size=+30g) or list them. virtio-blk disks
    /// are hot-plugged while the VM runs; the definition keeps them.
    BhyveDsk(BhyveDskArgs) = "bhyve-dsk" in Vms, listing = true,
        policy(|a: &BhyveDskArgs| Policy::reads_if(a.mode == DiskMode::List)) {
        /// attach, detach, delete (or remove), modify or list.
        mode: DiskMode = Default("list"),
        /// The VM (every VM here when list has none).
        jname: Option<Jname> = Optional,
        /// virtio-blk (hot-pluggable) or ahci-hd (q35 machines, stopped VMs).
        dsk_controller: Option<DiskController> = Optional,
        /// The disk: dskN or dskN.vhd, N from 1 to 9 (attach: the next free one).
        dsk_path: Option<String> = Optional,
        /// Size of a new disk (attach), or the new size or +growth (modify).
        dsk_size: Option<SizeChange> = Optional,
        /// Format of a new disk: qcow2 (snapshots need it) or raw.
        imgtype: ImgType = Default("qcow2"),
        /// Comma-separated columns to show (list).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0; list).
        header: bool = Default("1"),
    }

    /// Snapshots of a jail (CBSD's jsnapshot): refused with the reason, since
    /// a jail's data on shared storage has no snapshots ferry can take.
    Jsnapshot(JsnapshotArgs) = "jsnapshot" in Jails, listing = true,
        policy(|a: &JsnapshotArgs| Policy::reads_if(a.mode == SnapshotMode::List)) {
        /// create, list, destroy, destroyall or rollback.
        mode: SnapshotMode = Default("list"),
        /// The jail.
        jname: Jname = Required,
        /// The snapshot.
        snapname: Option<Word> = Optional,
    }

    /// Create, list or destroy checkpoints of a VM (RAM, devices and disks).
    Bcheckpoint(BcheckpointArgs) = "bcheckpoint" in Vms, listing = true,
        policy(|a: &BcheckpointArgs| Policy::reads_if(a.mode == CheckpointMode::List)) {
        /// create, list or destroyall.
        mode: CheckpointMode = Default("list"),
        /// The VM.
        jname: Jname = Required,
        /// The checkpoint's name (create).
        name: Word = Default("checkpoint"),
        /// Stop the VM once the checkpoint is written (create).
        suspend: bool = Default("0"),
        /// Comma-separated columns to show (CBSD's display=).
        display: Option<String> = Optional,
        /// 0: no header line (CBSD's header=0).
        header: bool = Default("1"),
    }
}

#[cfg(test)]
mod tests;
