from vgpuctl.describe import parse_fields, series_of, size_mib, typed_fields


def test_nvidia_description_parsed():
    d = "num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=5120x2880, max_instance=8"
    f = typed_fields(d, "GRID T4-2Q")
    assert f["framebuffer_mib"] == 2048
    assert f["num_heads"] == 4
    assert f["frl_config"] == 60
    assert f["max_resolution"] == "5120x2880"
    assert f["max_instance"] == 8
    assert f["series"] == "Q"
    assert dict(f["fields"])["framebuffer"] == "2048M"


def test_gvtg_description_parsed():
    d = "low_gm_size: 128MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1920x1200\nweight: 4\n"
    f = typed_fields(d, "GVTg_V5_4")
    assert f["framebuffer_mib"] == 512
    assert f["weight"] == 4
    assert f["max_resolution"] == "1920x1200"
    assert f["series"] is None
    assert [k for k, _ in f["fields"]] == ["low_gm_size", "high_gm_size", "fence", "resolution", "weight"]


def test_free_text_kept_unparsed():
    assert parse_fields("") == ()
    assert parse_fields("virtual display, 16 MB framebuffer") == ()
    f = typed_fields("", None)
    assert f == {"fields": (), "series": None}


def test_sizes_and_series():
    assert size_mib("16G") == 16384
    assert size_mib("1024", default_unit="M") == 1024
    assert size_mib("64 MB") == 64
    assert size_mib("lots") is None
    assert series_of("NVIDIA H200X-1-18C") == "C"
    assert series_of("NVIDIA A16-4B") == "B"
    assert series_of("GRID T4-2B4") == "B"
    assert series_of("mtty-1") is None
    assert series_of(None) is None
