import importlib.util
import os
import types

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "benchmark_data.py")


def load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_data", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RESULTS = {
    "load_before": 1.0, "load_after": 2.0, "kinetics_items": 2.5, "kinetics_clips": 5.0, "kinetics_plain": 7.0, "decode": 8.0, "decode_gop16": 16.0,
    "imagenet_images": 120.0, "kinetics_loader": 9.0, "imagenet_loader": 230.0, "demo_digits": 1.5, "demo_moving_digits": 20.0,
}


def test_report_holds_the_measured_numbers():
    tool = load_tool()
    text = tool.report(RESULTS, types.SimpleNamespace(workers=2))
    assert text.startswith("## Data loading\n")
    assert "**5.0 clips/s** (2.5 videos/s)" in text and "**120.0 images/s**" in text
    assert "| digits | 1797 JPEGs 32x32, ImageNet layout | 1.5 s |" in text


def test_write_section_replaces_only_its_own_section(tmp_path):
    tool = load_tool()
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Memory\n\nkeep me\n\n## Data loading\n\nold numbers\n\n## Later\n\nkeep me too\n")
    tool.write_section(str(path), "## Data loading\n\nnew numbers\n\n")
    text = path.read_text()
    assert "old numbers" not in text and "new numbers" in text
    assert text.index("## Memory") < text.index("new numbers") < text.index("## Later")
    assert text.count("keep me") == 2
    fresh = tmp_path / "NEW.md"
    tool.write_section(str(fresh), "## Data loading\n\nx\n")
    assert fresh.read_text() == "# Benchmarks\n\n## Data loading\n\nx\n"
