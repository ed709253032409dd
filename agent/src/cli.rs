//! The command line contract. Other tooling depends on these names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use repo_format::ops::forget::{Count, GroupBy, KeepDuration};

/// Back up and restore directories to a restic-format repository.
#[derive(Debug, Parser)]
#[command(name = "stash", version, about)]
pub struct Cli {
    /// Options for every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options for every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Repository: a path, local:/path, rest:http://host:port/, s3:https://host/bucket/prefix, gs:bucket:/prefix or azure:container:/prefix (env: STASH_REPOSITORY, RESTIC_REPOSITORY)
    #[arg(short = 'r', long = "repo", global = true)]
    pub repo: Option<String>,
    /// File holding the password (env: STASH_PASSWORD_FILE, RESTIC_PASSWORD_FILE; or STASH_PASSWORD / RESTIC_PASSWORD)
    #[arg(long = "password-file", global = true)]
    pub password_file: Option<PathBuf>,
    /// More log output on stderr (repeat for more)
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// At most N requests to the storage backend at once (default 5 for remote backends)
    #[arg(long = "connections", value_name = "N", global = true, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: Option<u32>,
    /// Trust the CA certificate(s) in this PEM file too (repeatable)
    #[arg(long = "cacert", value_name = "FILE", global = true)]
    pub cacert: Vec<PathBuf>,
    /// Do not verify the storage server's TLS certificate (dangerous)
    #[arg(long = "insecure-tls", global = true)]
    pub insecure_tls: bool,
    /// Take no lock (for read-only repositories; only for commands that do not write: snapshots, ls, cat, check, restore, dump)
    #[arg(long = "no-lock", global = true)]
    pub no_lock: bool,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository
    Init {
        /// Repository format version (1 or 2)
        #[arg(long = "repository-version", default_value = "2")]
        repository_version: String,
    },
    /// Back up files and directories
    Backup(BackupArgs),
    /// List snapshots
    Snapshots {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Show the identity each snapshot has in another tool's layout
        /// (namespace, PVC, pod volume, …; see deploy/ADOPTING.md), and
        /// which snapshots do not fit it
        #[arg(long, value_enum, value_name = "TOOL")]
        adopt: Option<AdoptFrom>,
    },
    /// List the files of a snapshot
    Ls {
        /// Snapshot id, unique prefix, or `latest`
        snapshot: String,
        /// Print JSON lines
        #[arg(long)]
        json: bool,
    },
    /// Print repository objects: config, snapshot ID, index ID, pack ID, blob ID, key ID
    Cat {
        /// config | snapshot | index | pack | blob | key
        what: String,
        /// The object's id (or a unique prefix); not for config
        id: Option<String>,
    },
    /// Restore a snapshot into a directory
    Restore(RestoreArgs),
    /// Write a file of a snapshot to standard output, or a directory as a tar or zip archive
    Dump(DumpArgs),
    /// Remove snapshots according to a retention policy
    Forget(ForgetArgs),
    /// Check the repository for errors
    Check(CheckArgs),
    /// Remove data no snapshot needs
    Prune(PruneArgs),
    /// Copy snapshots from another repository into this one
    Copy(CopyArgs),
    /// Repair the repository
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Manage the repository's keys (passwords)
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove stale locks (of dead processes on this host, or older than 30 minutes)
    Unlock {
        /// Remove all locks, even those of running processes
        #[arg(long = "remove-all")]
        remove_all: bool,
    },
    /// Run the node agent (a DaemonSet): back up and restore the pod volumes of this node
    Agent(AgentArgs),
    /// Wait until the node agent has restored into these directories (an init container)
    RestoreWait(RestoreWaitArgs),
    /// Run one item of a session in a Job the controller started (a PersistentVolumeClaim no pod mounts)
    #[command(subcommand)]
    Job(JobCommand),
}

/// `stash job`: workload-scoped executors.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Back up the claim mounted at --mount as the BackupSession's item of that claim
    Backup(JobArgs),
    /// Restore into the claim mounted at --mount as the RestoreSession's item of that claim
    Restore(JobArgs),
}

/// `stash job backup` and `stash job restore`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Namespace of the session (the Job's own)
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The BackupSession or RestoreSession
    #[arg(long)]
    pub session: String,
    /// The PersistentVolumeClaim whose item this Job runs
    #[arg(long)]
    pub claim: String,
    /// Where the claim is mounted in this pod
    #[arg(long)]
    pub mount: PathBuf,
    /// Directory holding the Repository's Secrets, one subdirectory per Secret name (Secret volumes)
    #[arg(long)]
    pub secrets: PathBuf,
    /// This pod's node (the downward API's spec.nodeName)
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node_name: String,
    /// This pod's name, for the claim
    #[arg(long = "pod-name", env = "POD_NAME")]
    pub pod_name: String,
    /// How often progress is written to the item
    #[arg(long = "progress-interval", default_value = "5s", value_parser = duration)]
    pub progress_interval: std::time::Duration,
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    stash_api::parse_duration(s).map_err(|e| e.to_string())
}

/// `stash agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name (from the downward API's spec.nodeName)
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node_name: String,
    /// This agent's pod name, for its claims (default: the host name)
    #[arg(long = "pod-name", env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The agent's own namespace, where its maintenance Leases are (from the downward API's metadata.namespace)
    #[arg(
        long = "namespace",
        env = "POD_NAMESPACE",
        default_value = "stash-system"
    )]
    pub namespace: String,
    /// The kubelet's root directory as mounted in the agent (k3s, RKE, TKGI and others use other places; see deploy/README.md)
    #[arg(
        long = "kubelet-root",
        env = "STASH_KUBELET_ROOT",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_root: PathBuf,
    /// The host's / as mounted in the agent (read-only), for hostPath volumes
    #[arg(long = "host-root", default_value = "/host")]
    pub host_root: PathBuf,
    /// A host directory whose hostPath volumes (and hostPath PersistentVolumes) may be backed up and restored: DIR for every namespace, NAMESPACE=DIR for one (repeatable; none by default)
    #[arg(long = "allow-host-path", value_name = "[NAMESPACE=]DIR")]
    pub allow_host_paths: Vec<String>,
    /// A directory local: repositories may be in (repeatable; none by default: local repositories are refused)
    #[arg(long = "allow-local-repository", value_name = "DIR")]
    pub allow_local_repositories: Vec<PathBuf>,
    /// A host pattern repository endpoints may name: host or *.domain (repeatable; none: any host)
    #[arg(long = "allow-egress", value_name = "HOST")]
    pub allow_egress: Vec<String>,
    /// A namespace whose Repositories may use the agent's own cloud identity when their Secret has no keys (metadata server, instance profile, IRSA, the agent's environment); * for all (repeatable; none by default)
    #[arg(long = "allow-ambient-identity", value_name = "NAMESPACE")]
    pub allow_ambient_identity: Vec<String>,
    /// A namespace whose credentials Secrets may override endpoints (STASH_GCS_ENDPOINT, STORAGE_EMULATOR_HOST, STASH_AZURE_ENDPOINT, AZURE_ENDPOINT_SUFFIX); * for all (repeatable; none by default)
    #[arg(long = "allow-endpoint-override", value_name = "NAMESPACE")]
    pub allow_endpoint_override: Vec<String>,
    /// Privilege-giving content a RestoreSession may ask to restore (spec.privileged), comma-separated: devices, setid, capabilities, security-xattrs, all; none by default
    #[arg(
        long = "allow-privileged-restore",
        env = "STASH_ALLOW_PRIVILEGED_RESTORE",
        default_value = "none"
    )]
    pub allow_privileged_restore: repo_format::ops::restore::Privileged,
    /// At most N items at once on this node
    #[arg(long = "max-concurrent", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_concurrent: u32,
    /// Address serving /metrics and /healthz
    #[arg(long = "metrics-addr", default_value = "0.0.0.0:9464")]
    pub metrics_addr: std::net::SocketAddr,
    /// Take over this node's items whose agent has shown no sign of life this long (e.g. 60s)
    #[arg(long = "takeover-after", default_value = "60s", value_parser = duration)]
    pub takeover_after: std::time::Duration,
    /// How often progress is written to an item's status
    #[arg(long = "progress-interval", default_value = "5s", value_parser = duration)]
    pub progress_interval: std::time::Duration,
}

/// `stash restore-wait`.
#[derive(Debug, Args)]
pub struct RestoreWaitArgs {
    /// A volume's mount path to wait for (repeatable)
    #[arg(long = "dir", value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Give up after this long (e.g. 30m); wait for ever when unset
    #[arg(long, value_parser = duration)]
    pub timeout: Option<std::time::Duration>,
    /// Leave the agent's marker files in place
    #[arg(long = "keep-marker")]
    pub keep_marker: bool,
    /// Accept only the marker of this RestoreSession, and leave it in place
    /// (a pod recreated after the restore then starts at once)
    #[arg(long = "session", value_name = "NAME")]
    pub session: Option<String>,
}

/// `stash key`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the keys; `*` marks the one in use
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a key for a new password
    Add {
        /// File holding the new password
        #[arg(long = "new-password-file", value_name = "FILE", required = true)]
        new_password_file: PathBuf,
    },
    /// Remove a key (not the one in use)
    Remove {
        /// The key's id or a unique prefix
        id: String,
    },
    /// Change the password: add a key for the new password, remove the one in use
    Passwd {
        /// File holding the new password
        #[arg(long = "new-password-file", value_name = "FILE", required = true)]
        new_password_file: PathBuf,
    },
}

/// `stash backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files and directories to back up (with --stdin-from-command: the command and its arguments, after `--`)
    #[arg(required_unless_present_any = ["stdin", "stdin_from_command"])]
    pub paths: Vec<PathBuf>,
    /// Back up standard input as one file (see --stdin-filename)
    #[arg(long)]
    pub stdin: bool,
    /// The file name standard input (or the command's output) is stored as; `dir/name` makes directories
    #[arg(long = "stdin-filename", default_value = "stdin", value_name = "NAME")]
    pub stdin_filename: String,
    /// Run the command given instead of paths and back up its standard output; the snapshot is written only when it exits with status 0
    #[arg(long = "stdin-from-command")]
    pub stdin_from_command: bool,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this host)
    #[arg(long = "host")]
    pub host: Option<String>,
    /// Exclude paths matching a pattern (repeatable; restic syntax)
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Snapshot to use as parent (default: latest with the same host and paths)
    #[arg(long = "parent")]
    pub parent: Option<String>,
    /// Read every file even if the parent says it is unchanged
    #[arg(long)]
    pub force: bool,
    /// Snapshot time instead of now (RFC 3339, or "YYYY-MM-DD HH:MM:SS" local time)
    #[arg(long = "time")]
    pub time: Option<String>,
    /// Record access times (off by default, like restic: they change on every read)
    #[arg(long = "with-atime")]
    pub with_atime: bool,
    /// Descend into other file systems mounted inside the backed-up
    /// directories (by default a mount point is recorded as an empty
    /// directory and reported; restic's default is the opposite, and its
    /// --one-file-system turns it off)
    #[arg(long = "cross-mounts")]
    pub cross_mounts: bool,
    /// Compression: auto (skips data that does not compress), off, fastest, better, max
    #[arg(long, default_value = "auto")]
    pub compression: repo_format::Compression,
    /// Target pack size in MiB
    #[arg(long = "pack-size", default_value_t = 16, value_parser = clap::value_parser!(u32).range(4..=128))]
    pub pack_size: u32,
    /// Concurrent pack uploads (default: the backend's connections, see --connections)
    #[arg(long = "upload-threads", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub upload_threads: Option<u32>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `stash dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Snapshot id, unique prefix, or `latest`
    pub snapshot: String,
    /// The file or directory in the snapshot (`/` for all of it)
    pub path: String,
    /// The archive format of a directory: tar or zip
    #[arg(short = 'a', long = "archive", default_value = "tar")]
    pub archive: repo_format::ops::dump::Archive,
    /// Write to this file instead of standard output
    #[arg(short = 't', long = "target", value_name = "FILE")]
    pub target: Option<PathBuf>,
}

/// A tool whose repositories `--adopt` reads (deploy/ADOPTING.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdoptFrom {
    /// Velero's file-system backups with the restic uploader
    Velero,
    /// K8up
    K8up,
    /// Stash v1 (stash.appscode.com/v1beta1)
    Stash,
    /// VolSync's restic mover
    Volsync,
}

impl AdoptFrom {
    /// The tool, for the mapping in `stash_api::adopt`.
    pub fn tool(self) -> stash_api::adopt::Tool {
        use stash_api::adopt::Tool;
        match self {
            AdoptFrom::Velero => Tool::Velero,
            AdoptFrom::K8up => Tool::K8up,
            AdoptFrom::Stash => Tool::Stash,
            AdoptFrom::Volsync => Tool::VolSync,
        }
    }
}

/// `stash restore --adopt`: a snapshot chosen by the identity another
/// tool gave it, its source's contents restored into the target.
#[derive(Debug, Args)]
pub struct AdoptSelectArgs {
    /// Choose the snapshot by the identity it has in this tool's layout
    /// (instead of naming a snapshot); the source's contents land directly
    /// in --target
    #[arg(long, value_enum, value_name = "TOOL")]
    pub adopt: Option<AdoptFrom>,
    /// The source's namespace (Velero, K8up)
    #[arg(long, value_name = "NS", requires = "adopt")]
    pub namespace: Option<String>,
    /// The PersistentVolumeClaim's name (K8up)
    #[arg(long, value_name = "NAME", requires = "adopt")]
    pub pvc: Option<String>,
    /// The PersistentVolumeClaim's UID (Velero)
    #[arg(long = "pvc-uid", value_name = "UID", requires = "adopt")]
    pub pvc_uid: Option<String>,
    /// The pod (Velero)
    #[arg(long, value_name = "NAME", requires = "adopt")]
    pub pod: Option<String>,
    /// The pod volume (Velero)
    #[arg(long, value_name = "NAME", requires = "adopt")]
    pub volume: Option<String>,
    /// The replica: host-<ordinal> (Stash v1)
    #[arg(long, value_name = "HOST", requires = "adopt")]
    pub replica: Option<String>,
    /// The backed-up path in the workload's container (Stash v1)
    #[arg(long, value_name = "PATH", requires = "adopt")]
    pub path: Option<String>,
    /// The latest snapshot taken at or before this time (RFC 3339, or
    /// "YYYY-MM-DD HH:MM:SS" local time), or `latest` (the default)
    #[arg(long, value_name = "TIME", requires = "adopt")]
    pub at: Option<String>,
}

/// `stash restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id, unique prefix, or `latest` (not with --adopt)
    #[arg(required_unless_present = "adopt", conflicts_with = "adopt")]
    pub snapshot: Option<String>,
    /// Choosing the snapshot by another tool's identity
    #[command(flatten)]
    pub adopt: AdoptSelectArgs,
    /// Directory to restore into
    #[arg(short = 't', long = "target", required = true)]
    pub target: PathBuf,
    /// Restore only paths matching a pattern (repeatable)
    #[arg(short = 'i', long = "include")]
    pub includes: Vec<String>,
    /// Do not restore paths matching a pattern (repeatable)
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Existing files: always (replace), if-changed (rewrite only what differs), if-newer (replace when the snapshot's copy is newer), never (keep)
    #[arg(long, default_value = "always")]
    pub overwrite: repo_format::ops::restore::Overwrite,
    /// Remove files in the restored directories that are not in the snapshot
    #[arg(long)]
    pub delete: bool,
    /// Read restored files back and check them against the snapshot
    #[arg(long)]
    pub verify: bool,
    /// Pack reads in parallel (default: two per CPU, at least the backend's connections)
    #[arg(long = "read-threads", default_value_t = 0)]
    pub read_threads: usize,
    /// Privilege-giving content to restore, comma-separated: devices,
    /// setid, capabilities, security-xattrs; `all` (the default, as restic
    /// does for your own data) or `none` (for a snapshot you do not trust:
    /// such content is then left out and reported as a warning)
    #[arg(long = "privileged", default_value = "all")]
    pub privileged: repo_format::ops::restore::Privileged,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `stash forget`: restic's retention options, decisions identical to
/// restic's.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Keep the last N snapshots (or unlimited)
    #[arg(
        short = 'l',
        long = "keep-last",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub keep_last: Option<Count>,
    /// Keep the last N hourly snapshots (or unlimited)
    #[arg(
        short = 'H',
        long = "keep-hourly",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub keep_hourly: Option<Count>,
    /// Keep the last N daily snapshots (or unlimited)
    #[arg(
        short = 'd',
        long = "keep-daily",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub keep_daily: Option<Count>,
    /// Keep the last N weekly snapshots (or unlimited)
    #[arg(
        short = 'w',
        long = "keep-weekly",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub keep_weekly: Option<Count>,
    /// Keep the last N monthly snapshots (or unlimited)
    #[arg(
        short = 'm',
        long = "keep-monthly",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub keep_monthly: Option<Count>,
    /// Keep the last N yearly snapshots (or unlimited)
    #[arg(
        short = 'y',
        long = "keep-yearly",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub keep_yearly: Option<Count>,
    /// Keep snapshots newer than DURATION (such as 1y5m7d2h) before the newest snapshot
    #[arg(long = "keep-within", value_name = "DURATION")]
    pub keep_within: Option<KeepDuration>,
    /// Keep hourly snapshots newer than DURATION before the newest snapshot
    #[arg(long = "keep-within-hourly", value_name = "DURATION")]
    pub keep_within_hourly: Option<KeepDuration>,
    /// Keep daily snapshots newer than DURATION before the newest snapshot
    #[arg(long = "keep-within-daily", value_name = "DURATION")]
    pub keep_within_daily: Option<KeepDuration>,
    /// Keep weekly snapshots newer than DURATION before the newest snapshot
    #[arg(long = "keep-within-weekly", value_name = "DURATION")]
    pub keep_within_weekly: Option<KeepDuration>,
    /// Keep monthly snapshots newer than DURATION before the newest snapshot
    #[arg(long = "keep-within-monthly", value_name = "DURATION")]
    pub keep_within_monthly: Option<KeepDuration>,
    /// Keep yearly snapshots newer than DURATION before the newest snapshot
    #[arg(long = "keep-within-yearly", value_name = "DURATION")]
    pub keep_within_yearly: Option<KeepDuration>,
    /// Keep snapshots carrying all of these tags, `tag[,tag,...]` (repeatable)
    #[arg(long = "keep-tag", value_name = "TAGLIST")]
    pub keep_tags: Vec<String>,
    /// Only consider snapshots of this host (repeatable)
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only consider snapshots carrying all of these tags, `tag[,tag,...]` (repeatable: any list)
    #[arg(long = "tag", value_name = "TAGLIST")]
    pub tags: Vec<String>,
    /// Only consider snapshots that include this absolute path (repeatable: all of them)
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// Group snapshots by host, paths and/or tags, comma-separated ('' for no grouping)
    #[arg(
        short = 'g',
        long = "group-by",
        value_name = "GROUP",
        default_value = "host,paths"
    )]
    pub group_by: GroupBy,
    /// Do not delete anything, only print what would be done
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Prune the repository afterwards
    #[arg(long)]
    pub prune: bool,
    /// Prune settings, for --prune
    #[command(flatten)]
    pub prune_opts: PruneOpts,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `stash check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read and verify all data
    #[arg(long = "read-data", conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a subset of the packs: n/t (group n of t), x% (a random x percent) or a size (such as 500M, random packs up to that size)
    #[arg(long = "read-data-subset", value_name = "SUBSET")]
    pub read_data_subset: Option<repo_format::ops::check::Subset>,
}

/// Prune settings (for `prune` and `forget --prune`), restic's options.
#[derive(Debug, Args)]
pub struct PruneOpts {
    /// Unused space tolerated after pruning: a percentage of the used size (5%), a size (10G) or "unlimited"
    #[arg(long = "max-unused", value_name = "LIMIT", default_value = "5%")]
    pub max_unused: repo_format::ops::prune::MaxUnused,
    /// Repack at most this much data (such as 1G)
    #[arg(long = "max-repack-size", value_name = "SIZE", value_parser = parse_size)]
    pub max_repack_size: Option<u64>,
    /// Repack only tree packs (the cacheable ones); leave data packs alone
    #[arg(long = "repack-cacheable-only")]
    pub repack_cacheable_only: bool,
    /// Repack packs holding uncompressed data, compressing it (repository version 2)
    #[arg(long = "repack-uncompressed")]
    pub repack_uncompressed: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    repo_format::ops::prune::parse_size(s)
}

/// `stash prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Prune settings
    #[command(flatten)]
    pub opts: PruneOpts,
    /// Only print what would be done
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `stash copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The repository to copy from (same forms as --repo)
    #[arg(long = "from-repo", value_name = "REPO", required = true)]
    pub from_repo: String,
    /// File holding the source repository's password (default: the destination's password)
    #[arg(long = "from-password-file", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Snapshots to copy (ids, unique prefixes or `latest`; default: all)
    pub snapshots: Vec<String>,
}

/// `stash repair`.
#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack files
    Index {
        /// Read the header of every pack, not only of those the index does not name
        #[arg(long = "read-all-packs")]
        read_all_packs: bool,
    },
}
