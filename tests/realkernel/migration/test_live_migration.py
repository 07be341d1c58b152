"""Live migration of a running domain with an mtty vGPU between two libvirt hosts, vgpuctl's hook on both.

Kernel 6.12's mtty migrates its device state (its 16550 registers and loop-back FIFO) through VFIO migration, QEMU
10 streams it, libvirt 11 drives it (``virsh migrate --live``). The domain is SeaBIOS alone: it assigns the mtty's
I/O BAR and halts; the test writes to the port through QEMU's monitor (``o``, ``i``: port I/O in the guest's
address space, as the guest's own ``outb``/``inb`` would), so no guest kernel has to boot under nested TCG.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from .. import guestlib as g
from .conftest import DOM_UUID, LibvirtHost, domain_xml, live_mdevs, new_uuid

pytestmark = pytest.mark.realkernel

XML_DIR = Path("/run/realkernel")
UART_RX, UART_FCR, UART_LSR, UART_SCR = 0, 2, 5, 7
LSR_DR = 0x01


def hmp(host: LibvirtHost, name: str, cmd: str) -> str:
    return host.virsh("qemu-monitor-command", "--hmp", name, cmd).stdout


def mtty_port(host: LibvirtHost, name: str) -> int:
    """The I/O address SeaBIOS gave the mtty's BAR0 (waits until it has), from QEMU's ``info pci``."""

    def bar():
        for block in hmp(host, name, "info pci").split("Bus ")[1:]:
            if "4348:3253" in block:  # mtty's vendor:device
                m = re.search(r"BAR0: I/O at (0x[0-9a-f]+)", block)
                if m and int(m.group(1), 16) not in (0, 0xFFFF, 0xFFFE):
                    return int(m.group(1), 16)
        return None

    return g.wait_until(bar, 240, interval=1, what="SeaBIOS to assign the mtty's I/O BAR")


def outb(host, name, port, value):
    hmp(host, name, f"o /b {port:#x} {value:#x}")


def inb(host, name, port) -> int:
    out = hmp(host, name, f"i /b {port:#x}")
    return int(out.strip().rsplit("=", 1)[1], 16)


def migrate(src: LibvirtHost, dst: LibvirtHost, name: str, check: bool = True):
    return src.virsh("migrate", "--live", name, dst.uri, "--migrateuri", "tcp://127.0.0.1", check=check, timeout=600)


def dumpxml(host: LibvirtHost, name: str, tag: str) -> str:
    XML_DIR.mkdir(parents=True, exist_ok=True)
    path = XML_DIR / f"{name}-{tag}.xml"
    path.write_text(host.virsh("dumpxml", "--migratable", name).stdout)
    return str(path)


def running_on(host: LibvirtHost, name: str) -> bool:
    p = host.virsh("domstate", name, check=False)
    return p.returncode == 0 and p.stdout.strip() == "running"


def qemu_vfio_fds(host: LibvirtHost, name: str) -> list:
    """What the domain's QEMU has open under /dev/vfio (for the messages of failed asserts)."""
    try:
        pid = int((host.dir / "run-libvirt/qemu" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError) as e:
        return [f"no pid: {e}"]
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "vfio" in link:
            out.append(link)
    return out


def held_by_qemu(host: LibvirtHost, name: str, uuid: str) -> None:
    """The domain's QEMU on ``host`` has the vGPU's VFIO group open (its fd links read ``.../dev/vfio/<group>``: the
    path of another mount namespace may carry a prefix)."""
    group = os.path.basename(os.readlink(f"/sys/bus/mdev/devices/{uuid}/iommu_group"))
    try:
        g.wait_until(
            lambda: any(f.endswith(f"/dev/vfio/{group}") for f in qemu_vfio_fds(host, name)),
            30,
            what=f"QEMU to hold {uuid}",
        )
    except TimeoutError:
        raise AssertionError(f"{uuid} (group {group}) not held; QEMU's vfio fds: {qemu_vfio_fds(host, name)}") from None


T0 = time.monotonic()
TRANSCRIPT = Path(os.environ.get("VGPUCTL_RK_CACHE", "/run/realkernel")) / "migration-transcript.log"


def transcript(line: str) -> None:
    """One step of the migration, with the time since the module was imported: printed, and appended to
    .cache/migration-transcript.log (the work tree's, kept after the guest is gone)."""
    text = f"[{time.monotonic() - T0:6.1f}s] {line}"
    print(text, flush=True)
    try:
        with open(TRANSCRIPT, "a") as f:
            f.write(text + "\n")
    except OSError:
        pass


@pytest.fixture(scope="module")
def domain(hosts):
    """A persistent domain on rk-a whose vGPU the hook makes at its start; started once for the module (a start
    costs minutes under nested TCG); the tests leave it running on rk-a. Removed at the end."""
    a, b = hosts
    transcript("two libvirt hosts up (rk-a, rk-b)")
    name = "rk-mig"
    vgpu = new_uuid()
    XML_DIR.mkdir(parents=True, exist_ok=True)
    path = XML_DIR / f"{name}.xml"
    path.write_text(domain_xml(name, vgpu))
    a.virsh("define", str(path))
    try:
        a.virsh("start", name)
    except g.VirshError as e:
        raise AssertionError(f"{e}\n--- qemu log ---\n{a.qemu_log(name)}\n--- libvirtd ---\n{a.log_tail()}") from None
    transcript(f"rk-a: virsh start {name} done")
    yield name
    for h in (a, b):
        h.virsh("destroy", name, check=False)
    a.virsh("undefine", name, check=False)
    for h in (a, b):
        for u in h.hook_record(DOM_UUID):
            g.wait_until(lambda u=u: not g.mdev_exists(u), 60, what=f"the hook to release {u}")


def on_a(hosts, name) -> str:
    """The domain runs on rk-a (where each test leaves it): its one vGPU, the one rk-a's hook made."""
    a, b = hosts
    assert running_on(a, name) and not running_on(b, name)
    made = a.hook_record(DOM_UUID)
    assert len(made) == 1 and live_mdevs(a, name) == made, (made, live_mdevs(a, name))
    return made[0]


def test_live_migration_there_and_back_keeps_the_device_state(hosts, domain):
    a, b = hosts
    name = domain
    # rk-a's hook made the vGPU at prepare and recorded it; rk-a's QEMU holds it
    vgpu = on_a(hosts, name)
    assert g.mdev_ready(vgpu)
    held_by_qemu(a, name, vgpu)
    transcript(f"rk-a: {name} running with vGPU {vgpu} (made by rk-a's hook)")

    port = mtty_port(a, name)
    outb(a, name, port + UART_FCR, 0x01)  # FIFO on, nothing cleared
    for ch in b"vg":
        outb(a, name, port + UART_RX, ch)  # THR: mtty loops it back into its receive FIFO
    outb(a, name, port + UART_SCR, 0x5A)
    transcript(f"rk-a: wrote 'v','g' to the mtty's THR and 0x5a to its scratch register (port {port:#x})")

    # the pre-flight on the target: it fits, with a fresh uuid (the source's is taken on this shared kernel)
    xml = dumpxml(a, name, "to-b")
    pre = b.vgpuctl("migrate", "check", "--xml", xml)
    transcript(
        "rk-b$ vgpuctl migrate check --xml "
        + os.path.basename(xml)
        + f"  (exit {pre.returncode})\n"
        + pre.stdout
        + pre.stderr
    )
    assert pre.returncode == 0, pre.stderr
    assert "fits" in pre.stdout

    p = migrate(a, b, name, check=False)
    assert p.returncode == 0, (
        f"{p.stderr}\n--- rk-b libvirtd ---\n{b.log_tail()}\n--- rk-b qemu ---\n{b.qemu_log(name)}"
    )
    transcript(f"rk-a$ virsh migrate --live {name} <rk-b> --migrateuri tcp://127.0.0.1  (exit 0)")
    assert running_on(b, name) and not running_on(a, name)
    # the target's hook made the vGPU (a fresh uuid), recorded it and rewrote the XML: rk-b's QEMU holds it
    there = b.hook_record(DOM_UUID)
    assert len(there) == 1 and there[0] != vgpu, there
    assert live_mdevs(b, name) == there
    assert g.mdev_ready(there[0])
    held_by_qemu(b, name, there[0])
    # the source's vGPU was released by rk-a's hook once its QEMU had gone
    g.wait_until(lambda: not g.mdev_exists(vgpu), 60, what=f"rk-a's hook to release {vgpu}")
    assert a.hook_record(DOM_UUID) == []
    transcript(f"rk-b: {name} running with vGPU {there[0]} (made by rk-b's hook); rk-a's {vgpu} released")

    # the device state arrived: the scratch register and the two bytes in the FIFO, in order
    port_b = mtty_port(b, name)
    assert inb(b, name, port_b + UART_SCR) == 0x5A
    assert inb(b, name, port_b + UART_LSR) & LSR_DR
    assert inb(b, name, port_b + UART_RX) == ord("v")
    transcript("rk-b: read back scratch 0x5a and 'v' from the FIFO")

    # and back: rk-a's hook makes yet another vGPU, rk-b's is released, the last byte is still there
    p = migrate(b, a, name, check=False)
    assert p.returncode == 0, (
        f"{p.stderr}\n--- rk-a libvirtd ---\n{a.log_tail()}\n--- rk-a qemu ---\n{a.qemu_log(name)}"
    )
    back = a.hook_record(DOM_UUID)
    assert len(back) == 1 and back[0] not in (vgpu, there[0]), back
    assert running_on(a, name) and live_mdevs(a, name) == back
    g.wait_until(lambda: not g.mdev_exists(there[0]), 60, what=f"rk-b's hook to release {there[0]}")
    assert b.hook_record(DOM_UUID) == []
    port_a = mtty_port(a, name)
    assert inb(a, name, port_a + UART_SCR) == 0x5A
    assert inb(a, name, port_a + UART_RX) == ord("g")
    assert not inb(a, name, port_a + UART_LSR) & LSR_DR
    transcript(
        f"rk-b$ virsh migrate --live {name} <rk-a>  (exit 0): rk-a's hook made {back[0]}, "
        f"rk-b's {there[0]} released, 'g' read back"
    )


def fill(parent: str = "mtty", type_id: str = "mtty-1"):
    made = []
    while g.available(parent, type_id) > 0:
        made.append(g.create_mdev(parent, type_id))
    return made


def test_a_full_target_is_refused_by_the_preflight_and_the_hook_and_the_source_keeps_running(hosts, domain):
    a, b = hosts
    name = domain
    vgpu = on_a(hosts, name)
    fillers = fill()
    try:
        before = set(g.list_mdevs())
        xml = dumpxml(a, name, "to-full-b")
        pre = b.vgpuctl("migrate", "check", "--xml", xml)
        transcript(
            f"rk-b (full)$ vgpuctl migrate check --xml {os.path.basename(xml)}  (exit {pre.returncode})\n"
            + pre.stdout
            + pre.stderr
        )
        assert pre.returncode == 4, (pre.stdout, pre.stderr)
        assert "no-capacity" in pre.stdout

        p = migrate(a, b, name, check=False)
        transcript(f"rk-a$ virsh migrate --live {name} <full rk-b>  (exit {p.returncode}): {p.stderr.strip()}")
        assert p.returncode != 0
        assert "vgpuctl" in p.stderr or "hook" in p.stderr, p.stderr
        # the source's domain still runs with its vGPU; the target made nothing and recorded nothing
        assert running_on(a, name)
        assert not running_on(b, name)
        held_by_qemu(a, name, vgpu)
        assert set(g.list_mdevs()) == before
        assert b.hook_record(DOM_UUID) == []
    finally:
        for u in fillers:
            g.remove_mdev(u)


def test_an_incompatible_type_is_refused_by_the_preflight(hosts, domain):
    a, b = hosts
    name = domain
    on_a(hosts, name)
    # the domain as a host with another vGPU type would describe it: rk-b offers no mtty-9
    xml = Path(dumpxml(a, name, "mtty-9"))
    xml.write_text(xml.read_text().replace('type="mtty-1"', 'type="mtty-9"').replace("type='mtty-1'", "type='mtty-9'"))
    pre = b.vgpuctl("migrate", "check", "--xml", str(xml))
    transcript(f"rk-b$ vgpuctl migrate check --xml {xml.name}  (exit {pre.returncode})\n" + pre.stdout + pre.stderr)
    assert pre.returncode == 15, (pre.stdout, pre.stderr)
    assert "incompatible" in pre.stdout
