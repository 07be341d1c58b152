import pytest

from vgpuctl.model import canonical_parent_name, canonical_uuid


@pytest.mark.parametrize(
    "given, want",
    [
        ("83B8F4F2-509F-382F-3C1E-E6BFE0FA1001", "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"),
        ("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"),
        ("83b8f4f2509f382f3c1ee6bfe0fa1001", None),
        ("83b8f4f2-509f-382f-3c1e-e6bfe0fa100", None),
        ("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001\n", None),
        ("zzb8f4f2-509f-382f-3c1e-e6bfe0fa1001", None),
        ("", None),
    ],
)
def test_canonical_uuid(given, want):
    assert canonical_uuid(given) == want


@pytest.mark.parametrize(
    "given, want",
    [
        ("0000:3B:00.0", "0000:3b:00.0"),
        ("3b:00.0", "0000:3b:00.0"),
        ("mtty", "mtty"),
        ("i915-GVTg", "i915-GVTg"),
        ("../mtty", None),
        ("mtty/..", None),
        ("..", None),
        (".", None),
        ("a/b", None),
        ("a..b", None),
        ("", None),
        ("0000:3b:00.8", "0000:3b:00.8"),  # no PCI function, but a legal device name (s390 uses 0.0.0123)
        ("mtty\0", None),
    ],
)
def test_canonical_parent_name(given, want):
    assert canonical_parent_name(given) == want
