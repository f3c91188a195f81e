"""Configuration: ``addon-storpoolrc``, the local override, ``/etc/storpool.conf`` and the
datastore template, with the old add-on's precedence and defaults.

Precedence, lowest first (reference §6):

1. built-in defaults (the Bash add-on's ``storpool_common.sh`` defaults);
2. ``addon-storpoolrc`` (``$ONE_LOCATION/var/remotes/`` or ``/var/lib/one/remotes/`` on the
   front-end, ``/var/tmp/one/`` on hosts);
3. ``/etc/storpool/addon-storpool.conf`` (local override);
4. the datastore template, for the attributes a datastore may set.

The rc files use shell ``VAR=value`` syntax. They are parsed, never executed: quotes,
``export``, comments and ``$VAR`` references to earlier variables are understood; anything
else is an error naming the file and line. Variables the old add-on knew but this one does not
use are accepted and ignored, so a cluster's existing files work unchanged; a name nobody knows
is refused (it is most likely a typo).

The StorPool API endpoint comes from ``/etc/storpool.conf`` (``SPConfig`` semantics: global
section, then ``[<hostname>]``, then the ``SP_*`` environment), and a datastore may point to
another cluster with its own ``SP_API_HTTP_HOST``/``PORT``/``SP_AUTH_TOKEN``.

``ONESTORPOOL_ROOT`` prefixes every default path (the sandbox uses it for a whole fake root).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onestorpool.errors import ConfigError

if TYPE_CHECKING:
    import argparse  # the CLI's; drivers never load it

# -- value types ------------------------------------------------------------------------------

_TRUE = {"1", "yes", "y", "true", "on"}
_FALSE = {"0", "no", "n", "false", "off", ""}


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected 0/1 or yes/no, got {value!r}")


def parse_int(value: str) -> int:
    if not re.fullmatch(r"-?[0-9]+", value.strip()):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def parse_optional_int(value: str) -> int | None:
    return None if value.strip() == "" else parse_int(value)


def parse_float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> int:
    """``DELAY_DELETE`` syntax ``N[s|m|h|d]`` in seconds; empty means 0 (delete at once)."""
    text = value.strip()
    if text == "":
        return 0
    match = re.fullmatch(r"([0-9]+)([smhd]?)", text)
    if match is None:
        raise ValueError(f"expected N[s|m|h|d], got {value!r}")
    return int(match[1]) * _DURATION_UNITS[match[2]]


def parse_str(value: str) -> str:
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    return parse


def parse_abs_path(value: str) -> str:
    """An absolute path, or empty for the default."""
    if value and not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    return value


def parse_dd_size(value: str) -> str:
    """A ``dd bs=`` size as GNU dd takes it: ``N`` bytes or ``N`` with a unit (``512K``,
    ``1M``, ``4MiB``, ``1MB``); never zero."""
    match = re.fullmatch(r"([0-9]+)(?:[kKMGT](?:iB|B)?)?", value.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"expected a dd block size such as 1M or 65536, got {value!r}")
    return value.strip()


def parse_anchor_target(value: str) -> str:
    """``EVENT_LOG_ANCHOR``: ``file:/PATH`` or ``volume:NAME``, or empty."""
    kind, _, where = value.partition(":")
    if value and not ((kind == "file" and where.startswith("/")) or
                      (kind == "volume" and where)):
        raise ValueError(f"expected file:/PATH or volume:NAME, got {value!r}")
    return value


def parse_log_volume(value: str) -> str:
    """``EVENT_LOG_VOLUME``: off (empty, ``no``, ``0``), ``yes`` (``<ONE_PX>-eventlog``) or a
    StorPool volume name."""
    text = value.strip()
    if text.lower() in ("", "0", "no", "off"):
        return ""
    if text.lower() in ("1", "yes", "on"):
        return "yes"
    if not re.fullmatch(r"[A-Za-z0-9_\-.]{1,190}", text) or text in ("list", "status"):
        raise ValueError(f"expected yes, no or a StorPool volume name, got {value!r}")
    return text


def parse_words(value: str) -> tuple[str, ...]:
    return tuple(value.split())


def parse_remote_backup(value: str) -> tuple[str, str] | None:
    """``REMOTE_BACKUP_DELETE="<location>[:<extra args>]"`` → (location, extra).

    The old add-on passed the location twice when there was no ``:`` (reference §10); here
    a bare location simply has no extra arguments.
    """
    text = value.strip()
    if text == "":
        return None
    location, _, extra = text.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9_\-.]+", location):
        raise ValueError(f"expected <location>[:<args>], got {value!r}")
    return location, extra.strip()


DEFAULT_EVENT_LOG = "/var/lib/one/onestorpool/events.db"

# -- the variables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    datastore: bool = False  # may a datastore template override it?

    @property
    def used(self) -> bool:
        """Whether the add-on acts on it (else accepted for compatibility, unused)."""
        return self.name not in UNUSED


# Settings of the Bash add-on accepted with their syntax checked, that nothing acts on yet
# (their actions are not written, or the behaviour is not carried over). `onestorpool config`
# says so; tests/test_config_settings.py fails when one of them is read, or when a setting
# not listed here is read by nothing.
UNUSED = frozenset("""
    AUTO_TEMPLATE SP_TEMPLATE_PROPAGATE SKIP_UNDEPLOY_SSH CLEAN_SRC_ON_UNDEPLOY VMSNAPSHOT_OVERRIDE
    VMSNAPSHOT_FSFREEZE
    DISK_SAVEAS_FSFREEZE UPDATE_ONE_DISK_SIZE
    UPDATE_IMAGE_ON_IMPORT DS_CP_FORCE_DEV_PREFIX TAG_CONTEXT_ISO
    FORCE_DETACH_BY_TAG FORCE_DETACH_OTHER_MV FORCE_DETACH_OTHER_CONTEXT ONE_TPM_SAVE
    LIMIT_TRANSFER_BW CLONE_COMPRESSION MKSWAP LOG_TO_FILE VM_TAG
""".split())


SETTINGS: tuple[Setting, ...] = (
    Setting("ONE_PX", "one", parse_str, "prefix of every StorPool name (several ONE instances)"),
    Setting("LOC_TAG", "nloc", parse_str, "tag naming the ONE instance"),
    Setting("LOC_TAG_VAL", "", parse_str, "value of LOC_TAG (default: ONE_PX)"),
    Setting("VM_TAG", "nvm", parse_str, "tag holding the VM id (empty: no VM tagging)"),
    Setting("DEFAULT_QOSCLASS", "", parse_str, "lowest-priority qc tag", ),
    Setting("SP_QOSCLASS", "", parse_str, "QoS class of the datastore", datastore=True),
    Setting("DELAY_DELETE", "48h", parse_duration,
            "keep deleted volumes as an expiring snapshot for this long (empty: at once)"),
    Setting("AUTO_TEMPLATE", "0", parse_bool, "(obsolete) manage templates from DS attributes"),
    Setting("SP_TEMPLATE_PROPAGATE", "1", parse_bool, "propagate template changes",
            datastore=True),
    Setting("NO_VOLUME_TEMPLATE", "1", parse_bool, "clones inherit the parent's template"),
    Setting("SP_SYSTEM", "ssh", _choice("ssh", "shared"), "system datastore mode",
            datastore=True),
    Setting("SP_CHECKPOINT", "", _choice("", "yes", "nomigrate"),
            "the subscriber moves a suspended/stopped VM's checkpoint file onto "
            "<px>-sys-<VM>-checkpoint (yes and nomigrate alike: never on migration)"),
    Setting("SP_CHECKPOINT_BD", "0", parse_bool, "checkpoint straight to a block device"),
    Setting("SP_COMPRESSION", "lz4", _choice("lz4", "zstd", "gzip", "pigz", "xz", "bzip2"),
            "compressor of archived checkpoints, run on the host (each of them reads back)"),
    Setting("SKIP_UNDEPLOY_SSH", "0", parse_bool, "skip copying the VM dir on undeploy"),
    Setting("CLEAN_SRC_ON_UNDEPLOY", "1", parse_bool, "wipe the source VM dir on undeploy"),
    Setting("VMSNAPSHOT_OVERRIDE", "1", parse_bool, "atomic StorPool VM snapshots"),
    Setting("VMSNAPSHOT_TAG", "ONESNAP", parse_str, "infix of VM snapshot names"),
    Setting("VMSNAPSHOT_FSFREEZE", "0", parse_bool, "guest fsfreeze during VM snapshots"),
    Setting("VMSNAPSHOT_DELETE_ON_TERMINATE", "1", parse_bool,
            "delete VM snapshots with the disk"),
    Setting("VMSNAPSHOT_ENABLE_LIMIT", "1", parse_bool, "enforce VMSNAPSHOT_LIMIT"),
    Setting("VMSNAPSHOT_LIMIT", "", parse_optional_int, "VM snapshot quota", datastore=True),
    Setting("VMSNAPSHOT_EXCLUDE_READONLY", "0", parse_bool, "skip read-only disks"),
    Setting("DISKSNAPSHOT_LIMIT", "", parse_optional_int, "per-disk snapshot quota",
            datastore=True),
    Setting("DISKSNAPSHOT_KEEP", "", parse_optional_int,
            "the subscriber prunes each disk to its newest N snapshots through oned (VM user "
            "template attribute of the same name wins)", datastore=True),
    Setting("DISKSNAPSHOT_MAX_AGE", "", parse_duration,
            "the subscriber prunes disk snapshots older than N[s|m|h|d] through oned (VM user "
            "template attribute of the same name wins)", datastore=True),
    Setting("DISK_SNAPSHOT_FSFREEZE", "0", parse_bool, "fsfreeze around live disk snapshots"),
    Setting("DISK_SAVEAS_FSFREEZE", "0", parse_bool, "fsfreeze around disk save-as"),
    Setting("UPDATE_ONE_DISK_SIZE", "1", parse_bool, "write reverted disk size back to ONE"),
    Setting("UPDATE_IMAGE_ON_IMPORT", "0", parse_bool, "set DRIVER/FORMAT=raw after import"),
    Setting("DS_CP_REPORT_FORMAT", "1", parse_bool, "cp prints 'SOURCE raw'"),
    Setting("DS_CP_FORCE_DEV_PREFIX", "", parse_str, "DEV_PREFIX set on imported images"),
    Setting("READONLY_MODE", "rw", _choice("rw", "ro"), "attach mode of read-only disks"),
    Setting("ATTACH_TIMEOUT", "20", parse_int, "seconds to wait for an attachment"),
    Setting("TAG_CONTEXT_ISO", "1", parse_bool, "tag the context volume"),
    Setting("FORCE_DETACH_BY_TAG", "0", parse_bool, "stale attachment cleanup by tag"),
    Setting("FORCE_DETACH_OTHER_MV", "1", parse_bool, "detach other clients on mv"),
    Setting("FORCE_DETACH_OTHER_CONTEXT", "1", parse_bool, "detach other clients on context"),
    Setting("STORPOOL_CLIENT_ID_SOURCES", "LOCAL ONEHOST FROMHOST BRIDGELIST CLONEGW",
            parse_words, "where SP_OURID of a host is looked up, in order"),
    Setting("COMMON_DOMAIN", "", parse_str, "domain suffix tried for host names"),
    Setting("ONE_TPM_SAVE", "1", parse_bool, "persist vTPM state in a volume"),
    Setting("REMOTE_BACKUP_DELETE", "", parse_remote_backup,
            "send deleted volumes to <location>[:<args>]", datastore=True),
    Setting("BRIDGE_LIST", "", parse_words, "hosts doing block work for the datastore",
            datastore=True),
    Setting("EXPORT_BRIDGE_LIST", "", parse_words, "hosts doing marketplace exports",
            datastore=True),
    Setting("SP_CLONE_GW", "", parse_str, "gateway for cross-cluster clones", datastore=True),
    Setting("NO_DECOMPRESS", "", parse_str, "do not decompress imports", datastore=True),
    Setting("LIMIT_TRANSFER_BW", "", parse_str, "import bandwidth limit", datastore=True),
    Setting("SP_SKIP_MONITOR", "0", parse_bool, "do not monitor this datastore",
            datastore=True),
    Setting("EXPORT_FILE_FORMAT", "", _choice("", "raw", "qcow", "qcow2"),
            "format of marketplace exports"),
    Setting("EXPORT_QEMU_IMG_ARGS", "", parse_str, "extra qemu-img arguments for exports"),
    Setting("EXPORT_TRANSPORT", "ssh", parse_str, "transport in IMPORT_SOURCE of exports"),
    Setting("STAGING_DIR", "/var/tmp", parse_str, "scratch directory for exports"),
    Setting("OVMF_PATH", "", parse_abs_path,
            "front-end directory of the UEFI vars templates a VM's "
            "T_OS_NVRAM=storpool:template=<file> names (default: <remotes>/OVMF)"),
    Setting("COPY_CMD_DD_BS", "1M", parse_dd_size, "dd block size writing imported data"),
    Setting("CLONE_COMPRESSION", "", parse_str, "compress cross-cluster clone streams"),
    Setting("RAFT_LEADER_IP", "", parse_str,
            "the subscriber acts only while this IP is local (the HA leader's floating IP); "
            "empty: while oned leads its zone (one.zone.raftstatus); disabled: always"),
    Setting("ONE_XMLRPC", "", parse_str, "oned XML-RPC endpoint"),
    Setting("ONE_CALL_RETRIES", "3", parse_int, "retries of oned calls"),
    Setting("STORPOOL_RETRIES", "10", parse_int, "tries of a transient StorPool call"),
    Setting("SP_API_CONNECT_TIMEOUT", "1", parse_float, "StorPool API connect timeout (s)"),
    Setting("SP_API_TIMEOUT", "300", parse_float, "StorPool API read timeout (s)"),
    Setting("SP_API_RETRY_DEADLINE", "60", parse_float,
            "give up retrying StorPool calls after this many seconds"),
    Setting("DEPLOY_TWEAKS", "volatile2dev cache-io persistent-cdrom", parse_words,
            "domain XML tweaks deploy-tweaks applies (a VM's T_* attributes turn one on or "
            "off): volatile2dev cache-io iothreads ioeventfd scsi-queues nic-queues cpu "
            "cputune-shares persistent-cdrom disk-serial hyperv kvm-hide video", datastore=True),
    Setting("LIBVIRT_URI", "qemu:///system", parse_str,
            "libvirt of the hosts (CD-ROM insert/eject, VM snapshot revert, migrate-tweaks)"),
    Setting("MIGRATE_OPTIONS", "", parse_str,
            "virsh migrate options of migrate-tweaks; --unsafe is added only when every disk "
            "of the domain has cache=none"),
    Setting("MKFS", "mkfs", parse_str, "mkfs command"),
    Setting("MKSWAP", "mkswap", parse_str, "mkswap command"),
    Setting("ALT_STATS", "0", parse_bool, "count internal u2+u3 as free"),
    Setting("EVENT_LOG", "", parse_abs_path,
            f"event log database (default {DEFAULT_EVENT_LOG}; $ONESTORPOOL_EVENTLOG wins)"),
    Setting("EVENT_LOG_ANCHOR", "", parse_anchor_target,
            "where 'onestorpool log checkpoint' also publishes the chain head: file:/PATH "
            "or volume:NAME (empty: syslog only)"),
    Setting("EVENT_LOG_VOLUME", "", parse_log_volume,
            "keep the event log's directory on this StorPool volume (yes: <ONE_PX>-eventlog), "
            "mounted by the leading front-end's subscriber only (OpenNebula HA; "
            "docs/eventlog.md); empty: a local file"),
    Setting("LOG_TO_FILE", "", parse_str, "also log to /var/log/one/addon-storpool.log"),
    Setting("DOMAIN_FIX", "1", parse_bool,
            "when a VM reaches RUNNING, the subscriber looks for its StorPool volatile and "
            "context disks that are still files in its domain: a persistent definition gets "
            "them as block devices (virsh define; the running domain is left alone), a "
            "transient domain has them recorded for migrate-tweaks to convert"),
    Setting("HOOK_ENDPOINT", "tcp://localhost:2101", parse_str,
            "oned's hook bus (one_hm's PUB socket) the subscriber connects to ($ONE_ZMQ wins)"),
    Setting("SUBSCRIBER_RECONCILE_INTERVAL", "5m", parse_duration,
            "the subscriber compares oned, StorPool and the log this often (and on start and "
            "after a reconnect): PUB/SUB loses messages"),
    Setting("SUBSCRIBER_CHECKPOINT_INTERVAL", "1h", parse_duration,
            "the subscriber checkpoints the event log this often (see EVENT_LOG_ANCHOR; "
            "0: never)"),
    Setting("SUBSCRIBER_METRICS_PORT", "0", parse_int,
            "the subscriber's Prometheus metrics port on 127.0.0.1 (0: none)"),
    Setting("CLEANUP_ORPHAN_SNAPSHOTS", "1", parse_bool,
            "the subscriber deletes the add-on's StorPool snapshots of VMs and images that "
            "OpenNebula no longer has (never tombstones, never another instance's)"),
    # The endpoint of a datastore's own cluster; cluster defaults come from /etc/storpool.conf.
    Setting("SP_API_HTTP_HOST", "", parse_str, "StorPool API host", datastore=True),
    Setting("SP_API_HTTP_PORT", "", parse_optional_int, "StorPool API port", datastore=True),
    Setting("SP_AUTH_TOKEN", "", parse_str, "StorPool API token", datastore=True),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

# Names the Bash add-on knew that we accept and ignore, so existing files keep working.
LEGACY_NAMES = frozenset("""
    PROPAGATE_YES VMSNAPSHOT_SLEEP VMSNAPSHOT_SLEEP_REMOTE VMSNAPSHOT_EXCLUDE_CDROM
    VMSNAPSHOT_ATOMIC VMSNAPSHOT_FSFREEZE_MULTIDISKS SP_IMPORT_CGROUPS COPY_CMD_DS_BS
    ONE_ARGS NO_PROXY_API NVRAM_TEMPLATE_PATH SCRIPTS_REMOTE_DIR PING_COUNT
    SP_SPACE_USED_LVMWAY MONITOR_VMSNAPSHOTS MONITOR_SEND_UDP MONITOR_ADDRESS
    MONITOR_PORT NC_WAIT_TIME MONITOR_HOST_ID SP_JSON_PATH SP_FE_JSON_PATH
    MONITOR_SYNC_REMOTE MV_DETACH_ALL CDROM_BACKWARD_COMPATIBILITY SKIP_RESERVED_CPU
    POLL_DISK_INFO_DEBUG DEBUG_INTERACTIVE SP_CLUSTER_ID
""".split())
LEGACY_PATTERNS = re.compile(
    r"^(D*DEBUG_\w+|\w+_DEBUG(_VERBOSE)?|T_\w+|SP_CMD_\w+|FS_OPTS_\w+|"
    r"SP_\w+_(RUN|JSON|MINUTES)|ONE_VM_POOL_\w+)$"
)

# -- shell assignment parser --------------------------------------------------------------------

_ASSIGN_RE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_BARE_RE = re.compile(r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\}|[^\s'\"`;|&<>(){}\\$]|\$(?![({]))+")
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def parse_shell_assignments(text: str, source: str,
                            known: Mapping[str, str] | None = None) -> dict[str, tuple[str, int]]:
    """``VAR=value`` lines → {VAR: (value, line number)}. Never executes anything.

    ``$VAR``/``${VAR}`` in double-quoted or bare values expand from earlier assignments in
    this file or from ``known`` (earlier files); single quotes are literal.
    """
    result: dict[str, tuple[str, int]] = {}
    scope = dict(known or {})
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ASSIGN_RE.match(line)
        if match is None:
            raise ConfigError(f"{source}:{number}: not a VAR=value assignment: {line[:60]!r}")
        name, rest = match[1], match[2]
        try:
            value = _shell_value(rest, scope)
        except ValueError as exc:
            raise ConfigError(f"{source}:{number}: {name}: {exc}") from None
        result[name] = (value, number)
        scope[name] = value
    return result


def _shell_value(text: str, scope: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t":
            rest = text[i:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError("unquoted whitespace in value (quote it)")
            break
        if char == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated single quote")
            out.append(text[i + 1:end])
            i = end + 1
        elif char == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                raise ValueError("unterminated double quote")
            out.append(_expand(re.sub(r'\\(["\\$`])', r"\1", text[i + 1:end]), scope))
            i = end + 1
        else:
            match = _BARE_RE.match(text, i)
            if match is None:
                raise ValueError(f"shell syntax {char!r} is not supported (the file is not "
                                 "executed)")
            out.append(_expand(match[0], scope))
            i = match.end()
    return "".join(out)


def _expand(text: str, scope: Mapping[str, str]) -> str:
    if "$(" in text:
        raise ValueError("command substitution is not supported")
    return _VAR_RE.sub(lambda m: scope.get(m[1] or m[2], ""), text)


# -- paths: every default location of the add-on, resolved here and nowhere else -----------

def root() -> Path:
    """``$ONESTORPOOL_ROOT`` (the sandbox's fake root) or ``/``: it prefixes every default."""
    return Path(os.environ.get("ONESTORPOOL_ROOT", "/"))


def _rooted(path: str) -> Path:
    return root() / path.lstrip("/")


def remotes_dir() -> Path:
    """oned's remotes on the front-end: ``$ONE_LOCATION/var/remotes`` for a self-contained
    install, else ``/var/lib/one/remotes``."""
    one_location = os.environ.get("ONE_LOCATION")
    if one_location:
        return Path(one_location) / "var/remotes"
    return _rooted("/var/lib/one/remotes")


def ovmf_dir(config: Config) -> Path:
    """Where the UEFI vars templates of ``T_OS_NVRAM`` are: ``OVMF_PATH``, else
    ``<remotes>/OVMF`` (the Bash add-on's default, synced to the hosts with the remotes)."""
    return Path(config["OVMF_PATH"]) if config["OVMF_PATH"] else remotes_dir() / "OVMF"


def rc_candidates() -> list[Path]:
    """Where ``addon-storpoolrc`` may live, first found wins (front-end, then host)."""
    return [remotes_dir() / "addon-storpoolrc", _rooted("/var/tmp/one/addon-storpoolrc")]


def event_log_path(config: Config | None = None) -> Path:
    """``$ONESTORPOOL_EVENTLOG``, else ``EVENT_LOG`` of the configuration (loaded when not
    given), else ``/var/lib/one/onestorpool/events.db`` under the root. With
    ``EVENT_LOG_VOLUME`` its directory must be that volume, mounted here (the leader): else
    one error, so that no front-end starts a log of its own."""
    config = load() if config is None else config
    path = Path(event_log_origin(config)[0])
    if config["EVENT_LOG_VOLUME"]:
        from onestorpool.eventlog.volume import check_mounted, volume_name

        check_mounted(path.parent, str(volume_name(config)))
    return path


def event_log_origin(config: Config | None = None) -> tuple[str, str]:
    """The event log path and where it came from (for ``onestorpool config``)."""
    explicit = os.environ.get("ONESTORPOOL_EVENTLOG", "").strip()
    if explicit:
        return explicit, "environment ONESTORPOOL_EVENTLOG"
    config = load() if config is None else config
    if config["EVENT_LOG"]:
        return config["EVENT_LOG"], config.origins["EVENT_LOG"]
    return str(_rooted(DEFAULT_EVENT_LOG)), "default"


def local_override_path() -> Path:
    return _rooted("/etc/storpool/addon-storpool.conf")


def storpool_conf_paths() -> list[Path]:
    main = _rooted("/etc/storpool.conf")
    conf_d = _rooted("/etc/storpool.conf.d")
    extra = sorted(p for p in conf_d.glob("*.conf") if not p.name.startswith(".")) \
        if conf_d.is_dir() else []
    return [main, *extra]


# -- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiEndpoint:
    """Where a StorPool cluster's API answers. The token never shows in ``repr``."""

    host: str
    port: int
    token: str = field(repr=False)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """The effective configuration: typed values plus where each came from."""

    values: Mapping[str, Any]
    origins: Mapping[str, str]
    extra: Mapping[str, str]  # legacy / tweak variables, kept raw
    storpool: Mapping[str, str]  # /etc/storpool.conf after section and env overrides
    raw: Mapping[str, str] = field(default_factory=dict)  # the text each value came from
    storpool_origins: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def prefix(self) -> str:
        return self.values["ONE_PX"]

    @property
    def loc_tag_value(self) -> str:
        return self.values["LOC_TAG_VAL"] or self.values["ONE_PX"]

    def naming(self):  # -> Naming; imported lazily to keep this module light
        from onestorpool.naming import Naming

        return Naming(self.prefix, self.values["VMSNAPSHOT_TAG"])

    def endpoint_origins(self) -> dict[str, str]:
        """Where the endpoint's host, port and token come from (the token never shown)."""
        found = {}
        for name in ("SP_API_HTTP_HOST", "SP_API_HTTP_PORT", "SP_AUTH_TOKEN"):
            if self.values[name] not in ("", None):
                found[name] = self.origins[name]
            elif self.storpool.get(name):
                found[name] = self.storpool_origins.get(name, "default")
            else:
                found[name] = "not set"
        return found

    def endpoint(self) -> ApiEndpoint:
        """The StorPool API of this configuration (datastore values win over storpool.conf)."""
        host = self.values["SP_API_HTTP_HOST"] or self.storpool.get("SP_API_HTTP_HOST",
                                                                      "127.0.0.1")
        port = self.values["SP_API_HTTP_PORT"]
        if port is None:
            try:
                port = parse_int(self.storpool.get("SP_API_HTTP_PORT", "81"))
            except ValueError as exc:
                raise ConfigError(f"SP_API_HTTP_PORT in storpool.conf: {exc}") from None
        token = self.values["SP_AUTH_TOKEN"] or self.storpool.get("SP_AUTH_TOKEN", "")
        if not token:
            raise ConfigError("no StorPool API token: set SP_AUTH_TOKEN in /etc/storpool.conf "
                              "or in the datastore template")
        if not 0 < port < 65536:
            raise ConfigError(f"SP_API_HTTP_PORT {port} is not a TCP port")
        return ApiEndpoint(host, port, token)

    def for_datastore(self, attributes: Mapping[str, str], source: str = "datastore") -> Config:
        """This configuration with a datastore template's attributes applied on top."""
        values, origins, raws = dict(self.values), dict(self.origins), dict(self.raw)
        for name, raw in attributes.items():
            setting = SETTINGS_BY_NAME.get(name)
            if setting is None or not setting.datastore:
                continue  # a datastore template has many attributes that are not ours
            if raw == "" and name not in ("REMOTE_BACKUP_DELETE",):
                continue  # empty = not set (the old add-on unset empty SP_* values)
            values[name] = _convert(setting, raw, f"{source} attribute {name}")
            origins[name], raws[name] = source, raw
        return Config(values, origins, self.extra, self.storpool, raws, self.storpool_origins)

    def describe(self) -> list[str]:
        """The settings in rc syntax, ``NAME=value  # origin``, for ``onestorpool config``:
        what a file would say to get this configuration. The token is never shown; settings
        nothing acts on say so."""
        lines = []
        for setting in SETTINGS:
            raw = self.raw.get(setting.name, setting.default)
            note = self.origins[setting.name]
            if not setting.used:
                note += "; accepted for compatibility, unused"
            if setting.name == "SP_AUTH_TOKEN":
                state = "set, hidden" if raw else "not set here"
                lines.append(f"# SP_AUTH_TOKEN ({state})  # {note}")
                continue
            lines.append(f"{setting.name}={shell_quote(raw)}  # {note}")
        return lines


def shell_quote(value: str) -> str:
    """``value`` as an rc file writes it: bare when it can be, else single-quoted."""
    if value and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


def _convert(setting: Setting, raw: str, where: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def load(rc_paths: Iterable[Path] | None = None, override_path: Path | None = None,
         storpool_paths: Iterable[Path] | None = None, hostname: str | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Read the add-on configuration; paths default to the standard locations."""
    environ = os.environ if environ is None else environ
    values = {s.name: _convert(s, s.default, f"default of {s.name}") for s in SETTINGS}
    origins = dict.fromkeys(values, "default")
    raws = {s.name: s.default for s in SETTINGS}
    extra: dict[str, str] = {}
    raw_scope: dict[str, str] = {}

    rc_list = [Path(p) for p in (rc_candidates() if rc_paths is None else rc_paths)]
    rc_found = next((p for p in rc_list if p.is_file()), None)
    override = Path(override_path) if override_path else local_override_path()
    files = [p for p in (rc_found, override) if p is not None]
    for path in files:
        text = _read_text(path)
        if text is None:
            continue
        for name, (raw, line) in parse_shell_assignments(text, str(path), raw_scope).items():
            raw_scope[name] = raw
            setting = SETTINGS_BY_NAME.get(name)
            if setting is not None:
                values[name] = _convert(setting, raw, f"{path}:{line}: {name}")
                origins[name], raws[name] = f"{path}:{line}", raw
            elif name in LEGACY_NAMES or LEGACY_PATTERNS.match(name):
                extra[name] = raw
            else:
                raise ConfigError(f"{path}:{line}: unknown variable {name} "
                                  "(not an addon-storpool setting; typo?)")

    storpool, storpool_origins = _storpool_conf(storpool_paths, hostname, environ)
    return Config(values, origins, extra, storpool, raws, storpool_origins)


def load_storpool_conf(paths: Iterable[Path] | None = None, hostname: str | None = None,
                       environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``SPConfig`` semantics: each file's global section then ``[hostname]``, then env."""
    return _storpool_conf(paths, hostname, environ)[0]


def _storpool_conf(paths: Iterable[Path] | None, hostname: str | None,
                   environ: Mapping[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """:func:`load_storpool_conf` and where each value came from."""
    environ = os.environ if environ is None else environ
    hostname = hostname or socket.gethostname()
    result = {"SP_API_HTTP_HOST": "127.0.0.1", "SP_API_HTTP_PORT": "81"}
    origins = dict.fromkeys(result, "default")
    for path in storpool_conf_paths() if paths is None else paths:
        text = _read_text(Path(path))
        if text is not None:
            found = storpool_sections(text, str(path), hostname)
            scoped = storpool_sections(text, str(path), hostname, include_global=False)
            result.update(found)
            origins.update({name: f"{path} [{hostname}]" if name in scoped else str(path)
                            for name in found})
    for name in ("SP_AUTH_TOKEN", "SP_API_HTTP_HOST", "SP_API_HTTP_PORT"):
        if environ.get(name):
            result[name], origins[name] = environ[name], f"environment {name}"
    return result, origins


def storpool_conf_section(section: str, paths: Iterable[Path] | None = None) -> dict[str, str]:
    """The values of one ``[section]`` only (e.g. a host's ``SP_OURID``)."""
    result: dict[str, str] = {}
    for path in storpool_conf_paths() if paths is None else paths:
        text = _read_text(Path(path))
        if text is not None:
            result.update(storpool_sections(text, str(path), section, include_global=False))
    return result


def storpool_sections(text: str, source: str, section: str,
                       include_global: bool = True) -> dict[str, str]:
    current: str | None = None
    found: dict[str, str] = {}
    scoped: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([^\]]+)\]", line)
        if header:
            current = header[1].strip()
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ConfigError(f"{source}:{number}: not a NAME=value line: {line[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if current is None and include_global:
            found[key.strip()] = value
        elif current == section:
            scoped[key.strip()] = value
    found.update(scoped)
    return found


def configure(parser: argparse.ArgumentParser) -> None:
    """``onestorpool config`` options (the CLI's one argparse tree calls this)."""
    parser.add_argument("--datastore", type=int, metavar="ID", default=None,
                        help="apply this datastore's template (read from oned) on top, as "
                             "its driver actions see it (default: the add-on's files only)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the effective configuration in rc syntax, the token never shown; exit 1 when
    the StorPool API could not be used with it."""
    config = load()
    title = "the add-on's files"
    if args.datastore is not None:
        from onestorpool import oneapi

        datastore = oneapi.datastore_info(args.datastore)
        config = config.for_datastore(datastore.template, f"datastore {datastore.id}")
        title = f"datastore {datastore.id} ({datastore.name or 'unnamed'})"
    print(f"# effective configuration of {title}, in addon-storpoolrc syntax")
    for line in config.describe():
        print(line)
    print(f"# paths: root {root()}, remotes {remotes_dir()}")
    log_path, log_origin = event_log_origin(config)
    print(f"# event log: {log_path}  ({log_origin})")
    from onestorpool import oneapi

    one_url, one_origin = oneapi.endpoint_origin(config)
    print(f"# oned XML-RPC: {oneapi._redact(one_url)}  ({one_origin})")
    sources = config.endpoint_origins()
    try:
        api = config.endpoint()
    except ConfigError as exc:
        print(f"# StorPool API: unusable: {exc}")
        return 1
    print(f"# StorPool API: {api}  (host: {sources['SP_API_HTTP_HOST']}; "
          f"port: {sources['SP_API_HTTP_PORT']})")
    print(f"# StorPool token: from {sources['SP_AUTH_TOKEN']} (never shown)")
    return 0


def main(argv: list[str]) -> int:
    """``onestorpool config [--datastore ID]`` on its own."""
    import argparse

    parser = argparse.ArgumentParser(prog="onestorpool config",
                                     description="Print the effective configuration.")
    configure(parser)
    return run(parser.parse_args(argv))
