"""Device XML from jinja2 templates: the ``<hostdev>`` that gives a domain its vGPU.

Built-in templates live in the package (``vgpuctl/data/templates``); a file of the same name in
``etc/vgpuctl/templates`` overrides one (read with ``fsutil``'s rules: a regular UTF-8 file of at most
``TEMPLATE_LIMIT`` bytes, no symlink, not world-writable).  Rendering is sandboxed (a template cannot reach Python
internals, ``*``/``**`` are bounded, and a render may use at most ``RENDER_CPU_SECONDS`` of CPU, so nested loops
that would run for hours are stopped), any error the template causes is a ``TemplateError``, and every
value is XML-escaped, so a domain name or a metadata value containing ``'"<>&`` cannot inject markup.  The result is
parsed and must be exactly one ``<hostdev>`` element; any failure is a ``TemplateError`` naming the file and line.

jinja2 is imported only when something is rendered, so importing this module costs nothing.
"""

from __future__ import annotations

import os
import stat
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigError, LibvirtUnavailable, TemplateError
from ..fsutil import read_text
from ..host.rules import named_by_parent
from ..model import PCI_ADDR_RE, Instance, VgpuType
from ..paths import HostPaths

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "templates"
MDEV_TEMPLATE = "mdev-hostdev.xml.j2"
PCI_TEMPLATE = "pci-hostdev.xml.j2"
#: device_api values the mdev core reports, which are also libvirt's hostdev ``model`` values
MDEV_MODELS = ("vfio-pci", "vfio-ccw", "vfio-ap")


@dataclass(frozen=True)
class Rendered:
    xml: str  #: one ``<hostdev>`` element, as rendered
    template: str  #: the file it came from


def alias_for(ident: str) -> str:
    """The user alias (``ua-`` prefix, libvirt >= 3.9) vgpuctl gives a device: ``ua-vgpu-<uuid or pci address>``."""
    return "ua-vgpu-" + "".join(c if c.isalnum() or c == "-" else "-" for c in ident.lower())


def device_context(
    instance: Instance,
    vtype: Optional[VgpuType],
    *,
    domain: str,
    display: Optional[bool] = None,
    ramfb: Optional[bool] = None,
    display_taken: bool = False,
) -> "tuple[str, Dict[str, Any]]":
    """The template name and context for ``instance``: mdev hostdev, or PCI hostdev for a per-VF vGPU.
    ``display_taken``: another vGPU of the domain has its display (or ramfb) on already; the shipped templates then
    render this one's off (at most one per domain: a second ramfb stops the VM from starting)."""
    common: Dict[str, Any] = {
        "domain": domain,
        "parent": instance.parent,
        "type_id": instance.type_id,
        "type_name": vtype.name if vtype else None,
        "alias": alias_for(instance.uuid),
        "display_taken": display_taken,
    }
    if named_by_parent(instance.backend):  # the vGPU is the VF itself: a PCI hostdev at its address
        m = PCI_ADDR_RE.match(instance.uuid)
        if not m:
            raise ConfigError(instance.uuid, "a per-VF vGPU's identity must be a PCI address")
        common.update(
            address=instance.uuid,
            domain_nr="0x" + (m.group("domain") or "0000").lower(),
            bus="0x" + m.group("bus").lower(),
            slot="0x" + m.group("slot").lower(),
            function="0x" + m.group("fn"),
        )
        return PCI_TEMPLATE, common
    api = vtype.device_api if vtype else None
    common.update(
        uuid=instance.uuid,
        model=api if api in MDEV_MODELS else "vfio-pci",
        display=display,
        ramfb=ramfb,
    )
    return MDEV_TEMPLATE, common


class Templates:
    """The device templates of one host: overrides in ``etc/vgpuctl/templates``, then the built-in ones."""

    def __init__(self, paths: HostPaths, *, builtin: Path = BUILTIN_DIR) -> None:
        self.override_dir = paths.config_dir / "templates"
        self.search: List[Path] = [self.override_dir, builtin]
        self._env: Any = None
        self._files: set = set()  #: the file names of the templates loaded: their code is what the CPU bound counts

    def _environment(self) -> Any:
        if self._env is None:
            try:
                import jinja2
            except ImportError:
                raise LibvirtUnavailable("jinja2") from None
            self._env = _bounded_sandbox()(
                loader=jinja2.FunctionLoader(self._load),
                autoescape=True,
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=False,
                auto_reload=False,
            )
            self._env.globals.pop("lipsum", None)  # lipsum(10**6) would write for minutes: a device needs no filler
        return self._env

    def _load(self, name: str) -> Any:
        """jinja2's loader: the template's text, read with the hardened reader (``fsutil``): a regular file of at
        most ``TEMPLATE_LIMIT`` bytes, UTF-8, not world-writable; no symlink in the override directory."""
        path = self.source_of(name)
        own = path.parent == self.override_dir
        text = read_text(path, limit=TEMPLATE_LIMIT, error=_template_error, follow=not own, missing_ok=False)
        self._files.add(os.fspath(path))
        return text, os.fspath(path), lambda: False

    def source_of(self, name: str) -> Path:
        """The file ``name`` resolves to (an override if there is one)."""
        if "/" in name or name.startswith("."):
            raise ConfigError(name, "is not a template name")
        for d in self.search:
            if os.path.lexists(d / name):  # an override of the wrong kind is refused when read, never skipped
                return d / name
        raise ConfigError(
            os.fspath(self.search[-1] / name),
            "template not found (looked in " + ", ".join(os.fspath(d) for d in self.search) + ")",
        )

    def render(self, name: str, context: Dict[str, Any]) -> Rendered:
        path = self.source_of(name)
        _refuse_unsafe(path, self.override_dir)
        env = self._environment()
        import jinja2

        try:
            text = _within_cpu_budget(lambda: env.get_template(name).render(**context), self._files)
        except _OverBudget:
            raise TemplateError(
                os.fspath(path),
                f"rendering used more than {RENDER_CPU_SECONDS:g} s of CPU (a loop "
                "that does not end?); a device template renders one <hostdev>",
            ) from None
        except TemplateError:
            raise
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(e.filename or os.fspath(path), e.message or str(e), line=e.lineno) from None
        except jinja2.TemplateError as e:
            raise TemplateError(os.fspath(path), _one_line(e), line=_template_line(e, os.fspath(path))) from None
        except RecursionError:
            raise TemplateError(os.fspath(path), "rendering recursed too deeply (a macro that calls itself?)") from None
        except Exception as e:  # whatever the sandboxed template did wrong (range too big, 1/0, ...): its error
            raise TemplateError(
                os.fspath(path),
                f"rendering failed: {type(e).__name__}: {_one_line(e)}",
                line=_template_line(e, os.fspath(path)),
            ) from None
        if len(text) > TEMPLATE_LIMIT:
            raise TemplateError(
                os.fspath(path),
                f"renders more than {TEMPLATE_LIMIT} characters; a device template renders one <hostdev>",
            )
        return Rendered(xml=check_hostdev(text, os.fspath(path)), template=os.fspath(path))

    def for_instance(
        self,
        instance: Instance,
        vtype: Optional[VgpuType],
        *,
        domain: str,
        display: Optional[bool] = None,
        ramfb: Optional[bool] = None,
        display_taken: bool = False,
    ) -> Rendered:
        name, ctx = device_context(
            instance, vtype, domain=domain, display=display, ramfb=ramfb, display_taken=display_taken
        )
        return self.render(name, ctx)


#: The most a template file may hold, and the most it may render.
TEMPLATE_LIMIT = 256 * 1024


#: The most CPU time (of the rendering thread) one render may take; a device template needs milliseconds.
RENDER_CPU_SECONDS = 2.0


class _OverBudget(BaseException):
    """Raised inside a template's code once its render passed ``RENDER_CPU_SECONDS``; a BaseException, so that
    nothing jinja2 or a filter does between the template and ``render`` can catch it."""


def _within_cpu_budget(fn: Any, files: set) -> Any:
    """``fn()``, stopped with ``_OverBudget`` once it has used ``RENDER_CPU_SECONDS`` of this thread's CPU.

    The sandbox bounds each ``range()`` and each ``*``, but not how often loops nest; a trace function on the
    template's own code (its frames carry the template's file name; every loop iteration is a line event there)
    checks the thread's CPU clock every 256 lines.  Python code outside the template is not traced, so the cost
    falls on templates alone; a tracer installed before (a debugger, coverage) is restored afterwards."""
    deadline = time.thread_time() + RENDER_CPU_SECONDS
    lines = [0]

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            lines[0] += 1
            if not lines[0] & 0xFF and time.thread_time() > deadline:
                raise _OverBudget()
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in files else None

    before = sys.gettrace()
    sys.settrace(calls)
    try:
        return fn()
    finally:
        sys.settrace(before)


def _template_error(path: str, problem: str) -> TemplateError:
    return TemplateError(path, problem)


_SANDBOX: Any = None


def _bounded_sandbox() -> Any:
    """jinja2's ``SandboxedEnvironment``, with ``*`` and ``**`` bounded so that a template cannot build a string,
    list or number large enough to exhaust memory (``'x' * 10**10``, ``9 ** 9 ** 9``)."""
    global _SANDBOX
    if _SANDBOX is None:
        from jinja2.sandbox import SandboxedEnvironment

        class Bounded(SandboxedEnvironment):  # type: ignore[misc]
            intercepted_binops = frozenset(["*", "**"])

            def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
                if operator == "**":
                    if isinstance(right, int) and abs(right) > 64 or isinstance(left, int) and abs(left) > 2**64:
                        raise OverflowError("the power is too large for a device template")
                elif operator == "*":
                    for seq, n in ((left, right), (right, left)):
                        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > TEMPLATE_LIMIT:
                            raise OverflowError("the repetition is too large for a device template")
                return super().call_binop(context, operator, left, right)

        _SANDBOX = Bounded
    return _SANDBOX


def check_hostdev(text: str, source: str) -> str:
    """``text`` stripped, if it is exactly one well-formed ``<hostdev>`` element; else a ``TemplateError``."""
    body = text.strip()
    if "<!" in body.replace("<!--", ""):
        raise TemplateError(
            source, "rendered XML contains a DOCTYPE, ENTITY or CDATA section; a device template may not"
        )
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        try:  # several top-level elements: say how many devices, not "junk after document element"
            root = ET.fromstring(f"<_>{body}</_>")
        except ET.ParseError:
            raise TemplateError(
                source, f"rendered XML is not well-formed ({_one_line(e)} of the rendered text)"
            ) from None
    count = sum(1 for el in root.iter() if el.tag == "hostdev")
    if root.tag != "hostdev" or count != 1:
        where = "" if root.tag == "_" else f" under <{root.tag}>"
        raise TemplateError(
            source,
            f"renders {count} <hostdev> element(s){where}; a device template must render exactly one "
            "<hostdev> as its only top-level element",
        )
    return body


def _refuse_unsafe(path: Path, override_dir: Path) -> None:
    """An override that anyone can write would let anyone choose what devices VMs get: refuse it."""
    if path.parent != override_dir:
        return
    for p in (path, override_dir):
        try:
            st = os.lstat(p)
        except OSError as e:
            raise ConfigError(os.fspath(p), f"cannot be read: {os.strerror(e.errno or 0)}") from None
        if st.st_mode & stat.S_IWOTH and not stat.S_ISLNK(st.st_mode):
            raise ConfigError(os.fspath(p), f"is world-writable; fix with: chmod o-w {os.fspath(p)}")


def _template_line(e: BaseException, filename: str) -> Optional[int]:
    """The line of ``filename`` where a render-time error happened (jinja2 rewrites tracebacks to template lines)."""
    line = None
    tb = e.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(filename):
            line = tb.tb_lineno
        tb = tb.tb_next
    return getattr(e, "lineno", None) or line


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


__all__: Sequence[str] = ["Templates", "Rendered", "check_hostdev", "device_context", "alias_for", "BUILTIN_DIR"]
