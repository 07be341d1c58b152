"""Helpers for tests that run inside the real-kernel guest (tests/realkernel/run).

Everything here talks to the real kernel and the real libvirtd with raw sysfs writes, /proc scans and ``virsh``;
none of it uses vgpuctl, so the facts it pins stay independent of the code under test.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

IN_GUEST = os.environ.get("VGPUCTL_REALKERNEL") == "1"
#: debian12 (Debian 12's kernel, the host's root) or bookworm-backports (kernel 6.12, QEMU 10, libvirt 11)
FLAVOUR = os.environ.get("VGPUCTL_RK_FLAVOUR", "debian12")
#: the sample parents the guest loaded (bookworm-backports: mtty only)
SAMPLE_MODULES = tuple(os.environ.get("VGPUCTL_RK_SAMPLE_MODULES", "mtty mdpy mbochs").split())

MDEV_BUS = Path("/sys/class/mdev_bus")
MDEV_DEVICES = Path("/sys/bus/mdev/devices")
DEV_VFIO = Path("/dev/vfio")
SAMPLES_DIR = Path(os.environ.get("VGPUCTL_RK_SAMPLES", "/nonexistent"))
URI = "qemu:///system"


# ------------------------------------------------------------------------------------------------ sysfs
def sysfs_write(path: os.PathLike, data: str) -> int:
    """Write ``data`` to a sysfs attribute in one write(2); return 0 or the errno the kernel returned."""
    try:
        fd = os.open(os.fspath(path), os.O_WRONLY)
    except OSError as e:
        return e.errno
    try:
        os.write(fd, data.encode())
        return 0
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


def read(path: os.PathLike) -> str:
    return Path(path).read_text().strip()


def type_dir(parent: str, type_id: str) -> Path:
    return MDEV_BUS / parent / "mdev_supported_types" / type_id


def available(parent: str, type_id: str) -> int:
    return int(read(type_dir(parent, type_id) / "available_instances"))


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def create_mdev(parent: str, type_id: str, uuid: Optional[str] = None) -> str:
    """Create an mdev by a raw write to ``create``; return its uuid (raises OSError with the kernel's errno)."""
    uuid = uuid or new_uuid()
    rc = sysfs_write(type_dir(parent, type_id) / "create", uuid)
    if rc:
        raise OSError(rc, f"create {parent}/{type_id} {uuid}: {os.strerror(rc)}")
    return uuid.lower()


def mdev_exists(uuid: str) -> bool:
    return os.path.lexists(MDEV_DEVICES / uuid.lower())


def mdev_ready(uuid: str) -> bool:
    """True once the kernel has finished creating the device: mdev core adds the device to the bus first and its
    ``mdev_type`` link and ``remove`` file a moment later, so another process can see the uuid without them."""
    return os.path.lexists(MDEV_DEVICES / uuid.lower() / "mdev_type")


def iommu_group(uuid: str) -> int:
    return int(os.path.basename(os.readlink(MDEV_DEVICES / uuid / "iommu_group")))


def mdev_type_of(uuid: str) -> str:
    return os.path.basename(os.readlink(MDEV_DEVICES / uuid / "mdev_type"))


def parent_of(uuid: str) -> str:
    return os.path.basename(os.path.dirname(os.path.realpath(MDEV_DEVICES / uuid)))


def list_mdevs() -> List[str]:
    try:
        return sorted(os.listdir(MDEV_DEVICES))
    except FileNotFoundError:
        return []


def holders(path: str) -> List[int]:
    """PIDs with ``path`` (an absolute path, e.g. /dev/vfio/3) among their open files."""
    pids = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        fd_dir = f"/proc/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
                # a process in another mount namespace (the migration flavour's libvirt hosts) shows the path
                # of its namespace's root: a prefix before /dev/vfio/N
                if link == path or link.endswith(path):
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return pids


def mdev_holders(uuid: str) -> List[int]:
    try:
        group = iommu_group(uuid)
    except OSError:
        return []
    return holders(str(DEV_VFIO / str(group)))


def remove_mdev(uuid: str, timeout: float = 20.0) -> None:
    """Remove an mdev by a raw write to ``remove``, in a child process so a held device cannot hang the caller.

    Raises RuntimeError if a process holds the device (checked first: the write would block) or the write does not
    finish within ``timeout``; OSError with the kernel's errno if the write fails.
    """
    uuid = uuid.lower()
    held = mdev_holders(uuid)
    if held:
        raise RuntimeError(f"mdev {uuid} is held open by pids {held}; not writing remove (it would block)")
    proc = start_remove(uuid)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"remove of {uuid} still blocked after {timeout}s (pid {proc.pid})") from None
    if proc.returncode:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise OSError(errno.EIO, f"remove {uuid} failed: rc {proc.returncode} {err.strip()}")


def start_remove(uuid: str) -> subprocess.Popen:
    """Start ``echo 1 > remove`` for ``uuid`` in a child shell (it blocks while a VM holds the device)."""
    path = MDEV_DEVICES / uuid.lower() / "remove"
    return subprocess.Popen(["/bin/sh", "-c", f"echo 1 > {path}"], stderr=subprocess.PIPE)


def process_state(pid: int) -> str:
    """One-letter state from /proc/<pid>/stat (R, S, D, Z...), or '' if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ uevents
class KernelUevents:
    """A kernel-source uevent listener (NETLINK_KOBJECT_UEVENT, group 1): what pyudev's kernel monitor sees."""

    def __init__(self):
        import socket

        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 1))

    def collect(self, quiet: float = 0.5, limit: float = 10.0) -> List[Dict[str, str]]:
        """Events until none arrives for ``quiet`` seconds; each a dict of the uevent's keys (ACTION, DEVPATH...)."""
        import select

        events = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], quiet)
            if not ready:
                break
            parts = self.sock.recv(1 << 16).split(b"\0")
            events.append(dict(p.decode(errors="replace").split("=", 1) for p in parts[1:] if b"=" in p))
        return events

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------------------------ modules
def rmmod(name: str) -> None:
    subprocess.run(["rmmod", name], check=True, capture_output=True, timeout=60)


def insmod(name: str) -> None:
    """insmod the sample module built by tests/realkernel/run (``mtty``, ``mdpy``, ``mbochs``)."""
    subprocess.run(["insmod", str(SAMPLES_DIR / f"{name}.ko")], check=True, capture_output=True, timeout=60)


def module_loaded(name: str) -> bool:
    return os.path.isdir(f"/sys/module/{name}")


# ------------------------------------------------------------------------------------------------ libvirt
QEMU_CONF_EXTRA = """
# written by tests/realkernel (guest tmpfs overlay only)
namespaces = []
security_driver = "none"
user = "root"
group = "root"
cgroup_controllers = []
"""

LOG_DIR = Path("/run/realkernel")
QEMU_CAPS_DIR = Path("/var/cache/libvirt/qemu/capabilities")
# libvirtd probes QEMU's capabilities (seconds under TCG) unless it finds a still-valid cache; the guest's /var is a
# fresh tmpfs overlay each boot, so the probe result is kept in the work tree cache between runs.
QEMU_CAPS_KEEP = Path(os.environ.get("VGPUCTL_RK_CACHE", "/nonexistent")) / "libvirt-qemu-capabilities"


class VirshError(RuntimeError):
    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(f"virsh {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")


def virsh(*args: str, uri: str = URI, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = ["virsh", "-q", "-c", uri, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise VirshError(args, proc)
    return proc


@dataclass
class Libvirtd:
    """systemd-udevd, virtlogd and libvirtd started in the guest; each PID is ours to stop."""

    uri: str = URI
    procs: Dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, timeout: float = 120) -> "Libvirtd":
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        conf = Path("/etc/libvirt/qemu.conf")
        text = conf.read_text() if conf.exists() else ""
        if "written by tests/realkernel" not in text:
            conf.write_text(text + QEMU_CONF_EXTRA)  # the guest's / is a tmpfs overlay: the host is untouched
        # no autostarted NAT network (no bridge/iptables in the guest)
        for p in Path("/etc/libvirt/qemu/networks/autostart").glob("*.xml"):
            p.unlink()
        for d in ("/run/libvirt", "/var/lib/libvirt/qemu", "/var/log/libvirt/qemu", QEMU_CAPS_DIR):
            os.makedirs(d, exist_ok=True)
        if QEMU_CAPS_KEEP.is_dir():
            for f in QEMU_CAPS_KEEP.glob("*.xml"):
                shutil.copy2(f, QEMU_CAPS_DIR / f.name)
        env = dict(os.environ, SYSTEMD_IGNORE_CHROOT="1")
        self._spawn("systemd-udevd", ["/lib/systemd/systemd-udevd"], env)
        self._spawn("virtlogd", ["virtlogd"], env)
        self._spawn("libvirtd", ["libvirtd"], env)
        deadline = time.monotonic() + timeout
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}: {self.log_tail(name)}")
            if os.path.exists("/run/libvirt/libvirt-sock"):
                if virsh("uri", uri=self.uri, check=False, timeout=60).returncode == 0:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"libvirtd not answering after {timeout}s: {self.log_tail('libvirtd')}")
            time.sleep(0.2)

    def _spawn(self, name: str, argv: List[str], env: Dict[str, str]) -> None:
        log = open(LOG_DIR / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def log_tail(self, name: str, n: int = 4000) -> str:
        try:
            return (LOG_DIR / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if QEMU_CAPS_KEEP.parent.is_dir():
            try:
                QEMU_CAPS_KEEP.mkdir(exist_ok=True)
                for f in QEMU_CAPS_DIR.glob("*.xml"):
                    shutil.copy2(f, QEMU_CAPS_KEEP / f.name)
            except OSError:
                pass
        for name in ("libvirtd", "virtlogd", "systemd-udevd"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def hostdev_xml(uuid: str) -> str:
    return f"<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{uuid}'/></source></hostdev>"


def domain_xml(name: str, mdev_uuids: Sequence[str], memory_mib: int = 32) -> str:
    """A tiny TCG domain: no disk, no NIC, no display; SeaBIOS finds nothing to boot and the VM just stays up.

    ACPI is on: without it QEMU's pci.0 refuses hot-plug ("Bus 'pci.0' does not support hotplugging").
    """
    hostdevs = "".join(hostdev_xml(u) for u in mdev_uuids)
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    {hostdevs}
  </devices>
</domain>
"""


@dataclass
class Domain:
    name: str
    mdevs: List[str]
    uri: str = URI

    @property
    def pid(self) -> Optional[int]:
        try:
            return int(Path(f"/run/libvirt/qemu/{self.name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def state(self) -> str:
        proc = virsh("domstate", self.name, uri=self.uri, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def destroy(self) -> None:
        if self.state() not in ("", "shut off"):
            virsh("destroy", self.name, uri=self.uri)

    def undefine(self) -> None:
        if self.state():
            virsh("undefine", self.name, uri=self.uri, check=False)


def live_mdevs(dom: "Domain") -> List[str]:
    """uuids of the mdev hostdevs in the domain's live XML."""
    import re

    xml = virsh("dumpxml", dom.name, uri=dom.uri).stdout
    return re.findall(r"<hostdev[^>]*type='mdev'.*?<address uuid='([0-9a-f-]+)'", xml, re.S)


def attach_mdev(dom: "Domain", uuid: str, *flags: str) -> subprocess.CompletedProcess:
    path = LOG_DIR / f"hostdev-{uuid}.xml"
    path.write_text(hostdev_xml(uuid))
    return virsh("attach-device", dom.name, str(path), *(flags or ("--live",)), uri=dom.uri)


def detach_mdev(dom: "Domain", uuid: str, *flags: str) -> subprocess.CompletedProcess:
    path = LOG_DIR / f"hostdev-{uuid}.xml"
    path.write_text(hostdev_xml(uuid))
    return virsh("detach-device", dom.name, str(path), *(flags or ("--live",)), uri=dom.uri)


def define_domain(name: str, mdev_uuids: Sequence[str], uri: str = URI) -> Domain:
    xml_path = LOG_DIR / f"{name}.xml"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    xml_path.write_text(domain_xml(name, mdev_uuids))
    virsh("define", str(xml_path), uri=uri)
    return Domain(name, [u.lower() for u in mdev_uuids], uri)


def start_domain(dom: Domain) -> None:
    virsh("start", dom.name, uri=dom.uri, timeout=300)


def qemu_log(name: str, n: int = 4000) -> str:
    try:
        return Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace")[-n:]
    except OSError:
        return ""


def have_libvirtd() -> bool:
    return bool(shutil.which("libvirtd") and shutil.which("virsh") and shutil.which("virtlogd"))
