"""``vgpuctl migrate check``: the live-migration pre-flight, run on the candidate target host.  Changes nothing."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Sequence

import click

from ..errors import InvalidInput, MigrationIncompatible, MigrationNoCapacity
from ._common import build_host, info, json_option, record, render, settings

SCHEMA = "vgpuctl.migration-check/v1"
COLUMNS = [
    ("VGPU", "uuid"),
    ("TYPE", "type_id"),
    ("NAME", "type_name"),
    ("FIT", "fit"),
    ("PARENT", "parent"),
    ("TARGET_UUID", "target_uuid"),
    ("REASON", "reason"),
]
#: at most this much domain XML is read (a domain definition is a few KiB)
MAX_XML = 4 * 1024 * 1024


@click.group()
def migrate() -> None:
    """Live migration of domains with vGPUs (see docs/migration.md): the pre-flight on a target host."""


def _read_xml(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.read(MAX_XML + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(MAX_XML + 1)
            text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"--xml {path}: cannot read it: {e}") from None
    if len(text) > MAX_XML:
        raise InvalidInput(f"--xml {path}: larger than {MAX_XML // (1024 * 1024)} MiB; is it a domain XML?")
    return text


def _source_xml(domain: str, uri: str) -> str:
    from ..virt.conn import Virt, bounded

    def read() -> str:
        with Virt.open(uri, readonly=True, timeout=None) as v:
            dom = v.lookup(domain)
            try:
                return dom.XMLDesc(0)
            except v.lv.libvirtError as e:
                raise v._error(e, "read the XML of", domain) from None

    return bounded(uri, settings().libvirt_timeout, read)  # a silent source libvirtd: exit 12, never a hang


def driver_version(root_paths: Any) -> Optional[str]:
    """The NVIDIA kernel module's version on this host (``/sys/module/nvidia/version``), the vGPU manager's."""
    try:
        with open(root_paths.sys / "module" / "nvidia" / "version") as f:
            return f.read(64).strip() or None
    except OSError:
        return None


def fit_record(f: Any) -> Dict[str, Any]:
    return record(
        SCHEMA,
        uuid=f.uuid,
        type_id=f.type_id,
        type_name=f.type_name,
        fit=str(f.fit),
        parent=f.parent,
        gpu=f.gpu,
        target_uuid=f.target_uuid,
        keeps_uuid=f.keeps_uuid if f.target_uuid else None,
        reason=f.reason or None,
    )


@migrate.command("check")
@click.option("--xml", "xml_path", metavar="FILE", help="The domain XML from the source host (- for stdin).")
@click.option("--domain", metavar="NAME", help="Read the domain's XML from the source's libvirt (with --source).")
@click.option(
    "--source",
    "source_uri",
    metavar="URI",
    help="The source host's libvirt URI (qemu+ssh://src/system), read-only, with --domain.",
)
@click.option(
    "--source-driver",
    metavar="VERSION",
    help="The source's NVIDIA vGPU manager version; NVIDIA migrates only between equal versions.",
)
@click.option(
    "--policy", "policy_file", metavar="FILE", help="Placement policy file (default: etc/vgpuctl/policy.yaml)."
)
@json_option
def check(
    xml_path: Optional[str],
    domain: Optional[str],
    source_uri: Optional[str],
    source_driver: Optional[str],
    policy_file: Optional[str],
    as_json: bool,
) -> None:
    """Can this host take the domain's vGPUs, and where would each land?  Exit 0 if all fit, 4 if capacity is
    short now, 15 if this host cannot run one at all.  Creates nothing."""
    from ..migration import Fit, SourceFacts, TargetFacts, check as preflight, verdict
    from ..virt.domxml import parse_domain
    from .place import build_usage, load_settings_policy

    if (xml_path is None) == (domain is None):
        raise InvalidInput("give exactly one of --xml FILE or --domain NAME (with --source URI)")
    if domain is not None and not source_uri:
        raise InvalidInput("--domain needs --source URI: the source host's libvirt to read the domain from")
    if source_uri and domain is None:
        raise InvalidInput("--source needs --domain NAME")
    s = settings()
    policy = load_settings_policy(s, policy_file)  # a bad policy fails before anything is read
    text = _read_xml(xml_path) if xml_path is not None else _source_xml(domain, source_uri)  # type: ignore[arg-type]
    try:
        dx = parse_domain(text)
    except ValueError as e:
        raise InvalidInput(f"the domain XML is unusable: {e}") from None
    if not dx.devices:
        raise InvalidInput(f"domain {dx.name!r} has no vGPU (no mdev or PCI hostdev): nothing to check")
    inv = build_host(s).inventory()
    fits = preflight(
        dx,
        inv,
        policy,
        usage=build_usage(s, inv),
        source=SourceFacts(driver_version=source_driver),
        target=TargetFacts(driver_version=driver_version(s.paths)),
    )
    render([fit_record(f) for f in fits], COLUMNS, as_json=as_json)
    answer = verdict(fits)
    reasons: Sequence[str] = [f"{f.uuid}: {f.reason}" for f in fits if f.fit is answer]
    if answer is Fit.INCOMPATIBLE:
        raise MigrationIncompatible(dx.name, reasons)
    if answer is Fit.NO_CAPACITY:
        raise MigrationNoCapacity(dx.name, reasons)
    nvidia = [f for f in fits if f.parent and str(getattr(inv.parent(f.parent), "vendor", "")) == "nvidia"]
    if source_driver is None and nvidia:
        info("the source's NVIDIA driver version is not known: pass --source-driver to check it is this host's")
    info(f"domain {dx.name}: all {len(fits)} vGPU(s) fit on this host")
