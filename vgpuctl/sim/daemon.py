"""Starting, stopping and inspecting the simulator daemon for one ROOT, and writing a profile's static tree.

Layout under ROOT: ``sys`` (the FUSE mount), ``dev/vfio`` (one ordinary file per mdev's IOMMU group, made and removed
by the daemon), ``etc``, ``var``, ``run`` (ordinary directories), ``run/vgpusim.log`` (the daemon's log) and
``run/vgpusim.pid``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional, Tuple

from vgpuctl.sim.machine import CONTROL_DIR, Dir, File, Link, Machine
from vgpuctl.sim.profile import Profile, load_profile

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_NAME = "vgpusim.log"
PID_NAME = "vgpusim.pid"


class SimStartError(RuntimeError):
    """The daemon did not come up (message is one line)."""


def _dirs(root: Path, prof: Optional[Profile] = None) -> None:
    for sub in ("sys", "dev/vfio", "etc", "var", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if prof is not None:
        install_vgpu_manager_units(root, prof)


UNIT_DIR = "usr/lib/systemd/system"
WANTS_DIR = "etc/systemd/system/multi-user.target.wants"


def vgpu_manager_units(prof: Profile) -> Tuple[str, ...]:
    """The NVIDIA vGPU manager's systemd units a host of ``prof`` has: nvidia-vgpu-mgr where a GPU has the nvidia
    driver, and nvidia-vgpud too where its vGPUs are mdevs (the older releases' daemon pair)."""
    nvidia = [d.model for d in prof.devices if d.model.driver == "nvidia"]
    if not nvidia:
        return ()
    return ("nvidia-vgpu-mgr.service",) + (("nvidia-vgpud.service",) if any(m.vgpu == "mdev" for m in nvidia) else ())


def install_vgpu_manager_units(root: Path, prof: Profile) -> None:
    """As the vGPU manager's package leaves them: its unit files under ROOT/usr/lib/systemd/system, enabled
    (ROOT/etc/systemd/system/multi-user.target.wants).  A unit file already there is left alone, and so is whether
    it is enabled (a test may have disabled it with ``systemctl --root ROOT disable``)."""
    for unit in vgpu_manager_units(prof):
        path = root / UNIT_DIR / unit
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        daemon = unit.split(".")[0]
        path.write_text(
            f"[Unit]\nDescription=NVIDIA {daemon} (simulated host: nothing runs)\n\n[Service]\n"
            f"Type=forking\nExecStart=/usr/bin/{daemon}\n\n[Install]\nWantedBy=multi-user.target\n"
        )
        wants = root / WANTS_DIR
        wants.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(wants / unit):
            os.symlink(f"/{UNIT_DIR}/{unit}", wants / unit)


def _unescape_mount(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def is_mounted(path: "str | os.PathLike[str]") -> bool:
    """Whether ``path`` is a mount point (read from mountinfo: works for a FUSE mount whose daemon is gone, where
    stat fails with ENOTCONN)."""
    path = os.path.abspath(os.fspath(path))
    want = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape_mount(fields[4]) == want:
                    return True
    except OSError:
        pass
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(root: Path) -> Optional[int]:
    try:
        return int((root / "run" / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _last_log_line(root: Path) -> str:
    try:
        lines = [ln for ln in (root / "run" / LOG_NAME).read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def start(
    profile: "str | os.PathLike[str]",
    root: "str | os.PathLike[str]",
    *,
    timeout: float = START_TIMEOUT,
    python: Optional[str] = None,
) -> int:
    """Mount the profile's tree at ROOT/sys in a detached daemon; return its pid once the mount answers."""
    root = Path(os.path.abspath(os.fspath(root)))
    prof = load_profile(profile)  # fail here, in the caller, on a bad profile
    mnt = root / "sys"
    if is_mounted(mnt):
        raise SimStartError(f"{mnt} is already mounted (run 'vgpuctl-sim stop {root}' first)")
    _dirs(root, prof)
    if any(mnt.iterdir()):
        raise SimStartError(f"{mnt} is not empty")
    log_path = root / "run" / LOG_NAME
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "ab") as logf, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [python or sys.executable, "-m", "vgpuctl.sim.cli", "_serve", prof.path, str(root)],
            stdin=devnull,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            env=env,
            cwd="/",
        )
    pid_file = mnt / CONTROL_DIR / "pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = _last_log_line(root) or f"exit status {proc.returncode}"
            raise SimStartError(f"simulator daemon exited during start: {detail}")
        try:
            if pid_file.read_text().strip() == str(proc.pid):
                return proc.pid
        except OSError:
            pass
        time.sleep(0.02)
    proc.terminate()
    stop(root)
    raise SimStartError(f"simulator did not mount {mnt} within {timeout:g} s (log: {log_path})")


def stop(root: "str | os.PathLike[str]", *, timeout: float = STOP_TIMEOUT) -> bool:
    """Unmount ROOT/sys and wait for the daemon to exit.  Idempotent; returns whether anything was running."""
    root = Path(os.path.abspath(os.fspath(root)))
    mnt = root / "sys"
    pid = read_pid(root)
    was = False
    if is_mounted(mnt):
        was = True
        if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    if pid is not None and pid_alive(pid):
        was = True
        deadline = time.monotonic() + timeout
        sent = None
        while pid_alive(pid):
            now = time.monotonic()
            if now >= deadline and sent is None:
                os.kill(pid, signal.SIGTERM)
                sent, deadline = signal.SIGTERM, now + 3
            elif now >= deadline and sent == signal.SIGTERM:
                os.kill(pid, signal.SIGKILL)
                sent, deadline = signal.SIGKILL, now + 3
            elif now >= deadline:
                break
            time.sleep(0.02)
    try:
        (root / "run" / PID_NAME).unlink()
    except FileNotFoundError:
        pass
    _clear_group_files(root / "dev" / "vfio")
    return was


def status(root: "str | os.PathLike[str]") -> Optional[Tuple[str, int]]:
    """(profile name, pid) of a running simulator, or None."""
    root = Path(os.path.abspath(os.fspath(root)))
    pid = read_pid(root)
    if pid is None or not pid_alive(pid) or not is_mounted(root / "sys"):
        return None
    try:
        name = (root / "sys" / CONTROL_DIR / "profile").read_text().strip()
    except OSError:
        return None
    return name, pid


def _clear_group_files(dev_vfio: Path) -> None:
    try:
        names = os.listdir(dev_vfio)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            try:
                (dev_vfio / name).unlink()
            except OSError:
                pass


def serve_main(profile_file: str, root: str) -> int:
    """The daemon's body: mount, serve until unmounted or signalled, clean up."""
    from vgpuctl.sim.fs import serve

    rootp = Path(root)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("vgpusim")
    prof = load_profile(profile_file)
    dev_vfio = rootp / "dev" / "vfio"
    _clear_group_files(dev_vfio)
    machine = Machine(prof, dev_vfio=str(dev_vfio), pid=os.getpid())
    (rootp / "run" / PID_NAME).write_text(f"{os.getpid()}\n")
    log.info("serving profile %s (%s) at %s", prof.name, prof.path, rootp / "sys")
    try:
        serve(machine, str(rootp / "sys"))
    finally:
        _clear_group_files(dev_vfio)
        pid_file = rootp / "run" / PID_NAME
        try:
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        except OSError:
            pass
        log.info("stopped")
    return 0


def materialize(
    profile: "str | os.PathLike[str] | Profile",
    root: "str | os.PathLike[str]",
    instances: Iterable[Tuple[str, str, str]] = (),
) -> Path:
    """Write a profile's tree as plain directories, files and relative symlinks under ROOT/sys (no behaviour, no
    control directory), and make ROOT/dev/vfio, etc, var, run.  ``instances``: (parent, type_id, uuid) mdevs to
    create first, with their ROOT/dev/vfio/<group> files.  Returns ROOT/sys."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    rootp = Path(os.path.abspath(os.fspath(root)))
    _dirs(rootp, prof)
    machine = Machine(prof, dev_vfio=str(rootp / "dev" / "vfio"))
    for parent, type_id, uuid in instances:
        if machine.functions[parent].vendor_vfio:  # a vendor-VFIO vGPU: (VF, "nvidia-N" or "N", VF)
            machine.set_vgpu_type(parent, type_id.rsplit("-", 1)[-1].encode())
        else:
            machine.create(parent, type_id, uuid.encode())
    return write_tree(machine, rootp / "sys")


def write_tree(machine: Machine, sys_dir: Path) -> Path:
    """Write ``machine``'s current tree under ``sys_dir`` as plain files (no control directory); returns it."""
    for path, node in sorted(machine.tree.items()):
        if path == "/" or path.startswith(f"/{CONTROL_DIR}"):
            continue
        dest = sys_dir / path.lstrip("/")
        if isinstance(node, Dir):
            dest.mkdir(parents=True, exist_ok=True)
        elif isinstance(node, File):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(node.content)
            os.chmod(dest, node.mode)
        else:
            assert isinstance(node, Link)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(node.target, dest)
    return sys_dir
