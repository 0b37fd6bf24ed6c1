"""The README stands alone: its links and pointers stay inside the repository, the method
lives in docs/METHOD.md with the reference numbers the report uses, and the project's own
build prints no warning."""

from __future__ import annotations

import re
import subprocess
import sys

from analysis.rank import REFERENCE_ROWS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
METHOD = (REPO / "docs" / "METHOD.md").read_text()


def test_no_pointer_leaves_the_repository():
    for doc, text in (("README.md", README), ("docs/METHOD.md", METHOD)):
        assert "../" not in text, doc
        assert not re.search(r"shared (folder|directory)", text), doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):  # markdown links
            if "://" in target:
                continue
            base = REPO if doc == "README.md" else REPO / "docs"
            assert (base / target).resolve().is_relative_to(REPO), (doc, target)
            assert (base / target).exists(), (doc, target)
    assert "](docs/METHOD.md)" in README


def test_method_page_holds_the_protocol_and_the_report_s_reference_numbers():
    for heading in ("The data", "The model", "Losses", "Training in two stages",
                    "Evaluation", "Reference numbers", "must not return"):  # fmt: skip
        assert re.search(rf"^## \d\. .*{heading}", METHOD, re.M), heading
    for row in REFERENCE_ROWS:  # the report's reference rows come from this page
        for key in ("test_rank1", "test_mAP"):
            assert f"{row[key]:.2f}" in METHOD, (row["system"], key)
    for aspect, threshold in (("dorsal_r", 1050), ("dorsal_l", 1037), ("palmar_r", 1051),
                              ("palmar_l", 1042)):  # fmt: skip
        from handreid.data.splits import STANDARD_THRESHOLDS

        assert STANDARD_THRESHOLDS[aspect] == threshold and str(threshold) in METHOD


def test_readme_says_which_split_each_base_config_uses():
    import yaml

    section = README.split("## Real 11k Hands data", 1)[1].split("\n## ", 1)[0]
    for path in sorted((REPO / "spaces" / "base").glob("*.yml")):
        split = yaml.safe_load(path.read_text())["data"]["split"]
        row = next(line for line in section.splitlines() if f"`spaces/base/{path.name}`" in line)
        assert f"| `{split}` |" in row, path.name
    assert "data.subset" in section and "--allow-missing" in section


def test_readme_gives_a_cpu_only_install_and_the_demo_time_on_2_cores():
    assert "Without a GPU" in README and "--index-url <PyTorch's CPU index>" in README
    timing = README.split("**How long the demo takes.**", 1)[1].split("\n\n", 1)[0]
    assert "2 CPU cores" in timing and "after `make install`" in timing
    assert re.search(r"\d+ min", timing)


def test_the_editable_build_prints_no_warning_of_ours(tmp_path):
    """setuptools' notice "Editable installation ... folders in your working directory" came
    with the import-finder layout; the project's package-dir gives a plain .pth instead."""
    code = (
        "import setuptools.build_meta as b, warnings; warnings.simplefilter('always'); "
        f"b.build_editable({str(tmp_path)!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    said = out.stdout + out.stderr
    assert "Warning" not in said and "Please be careful" not in said, said[-2000:]


def test_make_demo_keeps_its_cache_in_the_clone():
    """The demo's data and tiny CLIPs go to .cache/ of the clone, so its output (the data
    line, the pretraining line) names no path outside the repository."""
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed-stamp", "demo"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"HANDREID_CACHE=${{HANDREID_CACHE:-{REPO}/.cache/handreid}}" in out.stdout
