"""The README and docs/ run as written: every ```python block (unless marked
``<!-- docs-test: skip (reason) -->``, for blocks that need the Hub or a GPU) runs offline, in
order, per file, from the repository root; the README's main command runs; and no page speaks of
how the package was built."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- docs-test: skip \(([^)]*)\) -->\n)?```python\n(.*?)```", re.S)


def python_blocks(page: Path):
    """``(code, skip reason or None)`` of every python block of ``page``."""
    return [(code, reason or None) for _, reason, code in FENCE.findall(page.read_text())]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run_offline(page, tmp_path):
    runnable = [code for code, reason in python_blocks(page) if reason is None]
    if not runnable:
        pytest.skip(f"{page.name} has no offline python block")
    script = tmp_path / "blocks.py"
    script.write_text("\n\n".join(runnable))
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_skipped_block_says_why():
    for page in PAGES:
        for code, reason in python_blocks(page):
            assert reason is None or reason.strip(), f"{page.name}: a skipped block without a reason"


def test_readme_is_a_front_page_and_links_its_pages():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in ("docs/command-line.md", "docs/training.md", "docs/evaluation.md", "docs/fast-inference.md", "docs/architecture.md"):
        assert f"({page})" in readme and (REPO_ROOT / page).is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_build_log_words(page):
    text = page.read_text()
    for pattern in (r"\bsession\b", r"\bphase \d", r"#\d{2}\b", r"\bissue #?\d", r"\bwas lent\b", r"no GPU was lent"):
        assert not re.search(pattern, text, re.I), f"{page.name}: {pattern}"


@pytest.mark.slow
def test_the_readme_main_command_runs(tmp_path):
    """The last command of the README's set-up line, as written, in a scratch output folder."""
    readme = (REPO_ROOT / "README.md").read_text()
    setup = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    command = setup.split("&& ")[-1].replace("--output outputs/", f"--output {tmp_path}/")
    result = subprocess.run(command, shell=True, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    written = list(tmp_path.glob("coffee*.png"))
    assert len(written) == 1
    import PIL.Image

    assert PIL.Image.open(written[0]).size == (1200, 800)
