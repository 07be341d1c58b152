"""vgpuctl: manage virtual GPUs on KVM/libvirt hosts."""

__version__ = "0.1.0"
