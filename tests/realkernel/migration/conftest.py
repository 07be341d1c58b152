"""Two libvirt hosts in one bookworm-backports guest (``tests/realkernel/run --flavour bookworm-backports``).

Each host is a libvirtd (libvirt 11) with virtlogd in a mount and UTS namespace of its own (``libvirt-host``): its
own hostname, ``host_uuid``, config, sockets, domain state and logs, and its own vgpuctl folders with vgpuctl's qemu
hook installed as the Debian package installs it. They share the kernel (one mtty parent, so a uuid used on one is
taken on the other) and the loopback network, over which QEMU 10 streams the migration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pytest

from .. import guestlib as g

HERE = Path(__file__).resolve().parent
HOSTS_DIR = Path("/run/rkhosts")
VGPUCTL = shutil.which("vgpuctl") or "vgpuctl"
# libvirt probes QEMU 10's capabilities once per boot unless a valid cache is found (tens of seconds under TCG)
CAPS_DIR = Path("/var/cache/libvirt/qemu/capabilities")
CAPS_KEEP = Path(os.environ.get("VGPUCTL_RK_CACHE", "/nonexistent")) / "libvirt-qemu-capabilities-bpo"

QEMU_CONF = """# written by tests/realkernel/migration
namespaces = []
security_driver = "none"
user = "root"
group = "root"
cgroup_controllers = []
"""
# the hook the Debian package installs (debian/vgpuctl.install), calling the guest venv's vgpuctl
HOOK_SRC = HERE.parents[2] / "libvirt/hooks/qemu.d/vgpuctl"


@dataclass
class LibvirtHost:
    name: str
    host_uuid: str
    dir: Path = field(init=False)
    proc: Optional[subprocess.Popen] = None

    def __post_init__(self):
        self.dir = HOSTS_DIR / self.name

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.dir}/run-libvirt/libvirt-sock"

    def start(self, timeout: float = 180) -> "LibvirtHost":
        etc = self.dir / "etc-libvirt"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        for p in (etc / "qemu/networks/autostart").glob("*.xml"):
            p.unlink()
        (etc / "libvirtd.conf").write_text(f'host_uuid = "{self.host_uuid}"\n')
        (etc / "qemu.conf").write_text(QEMU_CONF)
        hook = etc / "hooks/qemu.d/vgpuctl"
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(HOOK_SRC.read_text().replace("/usr/bin/vgpuctl", VGPUCTL))
        hook.chmod(0o755)
        for d in ("run-libvirt", "lib-libvirt", "log-libvirt", "etc-vgpuctl", "run-vgpuctl", "lib-vgpuctl"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        for d in ("/run/libvirt", "/etc/vgpuctl", "/run/vgpuctl", "/var/lib/vgpuctl"):
            os.makedirs(d, exist_ok=True)
        CAPS_DIR.mkdir(parents=True, exist_ok=True)
        if CAPS_KEEP.is_dir():
            for f in CAPS_KEEP.glob("*.xml"):
                shutil.copy2(f, CAPS_DIR / f.name)
        log = open(self.dir / "libvirtd.log", "ab")
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "bash",
                str(HERE / "libvirt-host"),
                self.name,
                str(self.dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        sock = self.dir / "run-libvirt/libvirt-sock"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd of {self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if sock.exists() and self.virsh("uri", check=False, timeout=60).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"libvirtd of {self.name} not answering after {timeout}s: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.dir / "libvirtd.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def virsh(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return g.virsh(*args, uri=self.uri, check=check, timeout=timeout)

    def vgpuctl(self, *args: str, input: Optional[str] = None, timeout: float = 180) -> subprocess.CompletedProcess:
        """vgpuctl run as on this host: in its mount and UTS namespaces (its etc/run/state), no libvirt."""
        # -r -w: the daemon's root and cwd (the guest runs chrooted; entering a mount namespace resets them)
        return subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "-u", "-r", "-w", "--", VGPUCTL, "--connect", "none", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )

    def hook_record(self, dom_uuid: str) -> List[str]:
        path = self.dir / "run-vgpuctl/hook" / f"{dom_uuid}.json"
        if not path.exists():
            return []
        return json.loads(path.read_text()).get("created", [])

    def qemu_log(self, name: str) -> str:
        try:
            return (self.dir / "log-libvirt/qemu" / f"{name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        for name in self.virsh("list", "--name", check=False).stdout.split():
            self.virsh("destroy", name, check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        try:
            os.kill(int((self.dir / "run-libvirt/virtlogd.pid").read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        self.proc = None
        # the daemon's and the domains' logs outlive the guest in the work tree's cache
        keep = Path(os.environ.get("VGPUCTL_RK_CACHE", "/nonexistent")) / "migration-logs" / self.name
        if keep.parent.parent.is_dir():
            shutil.rmtree(keep, ignore_errors=True)
            keep.mkdir(parents=True, exist_ok=True)
            for f in [self.dir / "libvirtd.log", *(self.dir / "log-libvirt/qemu").glob("*.log")]:
                try:
                    shutil.copy2(f, keep / f.name)
                except OSError:
                    pass


@pytest.fixture(autouse=True)
def _realkernel_clean_state():
    """Replaces the stage's per-test reset (every mdev removed): here one domain and its vGPU live through the
    module's tests; the ``domain`` fixture stops it and waits for the hooks to release what they made."""
    yield


@pytest.fixture(scope="session")
def hosts():
    """Two libvirt hosts, ``rk-a`` and ``rk-b``, each with vgpuctl's hook; stopped at the end."""
    if not g.IN_GUEST or g.FLAVOUR != "bookworm-backports":
        pytest.skip(
            "real-kernel test: runs only inside the QEMU guest (tests/realkernel/run --flavour bookworm-backports)"
        )
    # both names resolve (libvirt's default migration URI is the destination's hostname)
    with open("/etc/hosts", "a") as f:
        f.write("127.0.0.1 rk-a rk-b\n")
    a = LibvirtHost("rk-a", "aaaaaaaa-1111-4111-8111-000000000001").start()
    try:
        # the first daemon probes QEMU's capabilities; the second finds them cached
        a.virsh("domcapabilities", "--virttype", "qemu", "--arch", "x86_64", "--machine", "pc", timeout=600)
        b = LibvirtHost("rk-b", "bbbbbbbb-2222-4222-8222-000000000002").start()
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()
        if CAPS_KEEP.parent.is_dir():
            try:
                CAPS_KEEP.mkdir(exist_ok=True)
                for f in CAPS_DIR.glob("*.xml"):
                    shutil.copy2(f, CAPS_KEEP / f.name)
            except OSError:
                pass


DOM_UUID = "6695eb01-f6a4-4304-89aa-97f2502e10aa"


def domain_xml(name: str, vgpu_uuid: str, type_id: str = "mtty-1", dom_uuid: str = DOM_UUID) -> str:
    """A tiny TCG domain whose one vGPU vgpuctl's hook manages (metadata + mdev hostdev): SeaBIOS assigns the
    device's I/O BAR and enables decoding, finds nothing to boot and halts for good (rebootTimeout -1).

    ``x-device-dirty-page-tracking=off``: with it on (the default) QEMU 10 asks the mtty for device DMA logging
    reports, which the sample does not implement ("Failed to get DMA logging report ... Operation not supported",
    then ram_save_setup fails). Off, the type1 container of an emulated-IOMMU mdev has no dirty tracking either, and
    QEMU blocks the migration ("VFIO device doesn't support device and IOMMU dirty tracking") unless
    ``enable-migration=on``: then it migrates treating all guest RAM as dirty (32 MiB here)."""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{dom_uuid}</uuid>
  <metadata>
    <vgpuctl:vgpus xmlns:vgpuctl="https://vgpuctl.dev/xmlns/1">
      <vgpuctl:vgpu uuid="{vgpu_uuid}" parent="mtty" type="{type_id}" backend="mdev"/>
    </vgpuctl:vgpus>
  </metadata>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/><bios rebootTimeout='-1'/></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
      <alias name='hostdev0'/>
      <source><address uuid='{vgpu_uuid}'/></source>
    </hostdev>
  </devices>
  <qemu:override>
    <qemu:device alias='hostdev0'>
      <qemu:frontend>
        <qemu:property name='x-device-dirty-page-tracking' type='string' value='off'/>
        <qemu:property name='enable-migration' type='string' value='on'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"""


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def live_mdevs(host: LibvirtHost, name: str) -> List[str]:
    xml = host.virsh("dumpxml", name).stdout
    return re.findall(r"<hostdev[^>]*type='mdev'.*?<address uuid='([0-9a-f-]+)'", xml, re.S)
