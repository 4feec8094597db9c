"""Code and docs cite only what a user of the repository has: our docs/ (docs/reference_notes.md for the original
code's behaviour) or upstream paths, never the development notes kept outside the repository."""

import os
import re
import subprocess
from fixtures.paths import REPO

# the file names are built from pieces so that this file does not match itself
_MD = ".md"
OUTSIDE_NOTES = ["REFERENCE" + _MD, "DESIGN" + _MD, "ANCHORS" + _MD, "PLATFORM" + "_NOTES", "PERF" + "_ANCHORS"]
PATTERN = re.compile("|".join(re.escape(n) for n in OUTSIDE_NOTES))


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return [f for f in out if os.path.isfile(os.path.join(REPO, f))]


def test_no_file_cites_notes_outside_the_repository():
    hits = []
    for name in repo_files():
        try:
            with open(os.path.join(REPO, name), encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        for number, line in enumerate(text.splitlines(), 1):
            if PATTERN.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "cite docs/reference_notes.md or an upstream path instead:\n" + "\n".join(hits)


def test_reference_notes_sections_cited_exist():
    with open(os.path.join(REPO, "docs", "reference_notes.md")) as f:
        sections = set(re.findall(r"^## (\d+)\. ", f.read(), re.M))
    quirks = set(re.findall(r"\*\*Q(\d+)\.", open(os.path.join(REPO, "docs", "reference_notes.md")).read()))
    cited = []
    for name in repo_files():
        if name.endswith((".py", ".md", ".sh")):
            text = open(os.path.join(REPO, name), encoding="utf-8").read()
            for m in re.finditer(r"reference_notes\.md §(\d+)(?: Q(\d+))?", text):
                cited.append((name, m.group(1), m.group(2)))
    assert cited
    for name, section, quirk in cited:
        assert section in sections, f"{name} cites reference_notes.md §{section}, which does not exist"
        assert quirk is None or (section == "10" and quirk in quirks), f"{name}: §{section} Q{quirk}"
