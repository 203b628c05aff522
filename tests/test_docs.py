"""The docs cannot drift from the code: every flag's default in --help and in docs/flags.md, and every
file and module the docs name exists.

When a flag changes, the failing test prints the table docs/flags.md should hold
(or run ``python tests/test_docs.py`` to print it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FLAGS_DOC = ROOT / "docs" / "flags.md"
START, END = "<!-- flags: start -->", "<!-- flags: end -->"


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command a user runs, by the name they type."""
    import evaluate
    import export
    import parse_images
    from dataset import browse, check, convert, synthetic
    from training.flags import get_args_parser

    return {
        "train.py": get_args_parser(),
        "evaluate.py": evaluate.get_args_parser(),
        "parse_images.py": parse_images.get_args_parser(),
        "export.py": export.get_args_parser(),
        "python -m dataset.check": check.get_args_parser(),
        "python -m dataset.browse": browse.get_args_parser(),
        "python -m dataset.synthetic": synthetic.get_args_parser(),
        "python -m dataset.convert": convert.get_args_parser(),
    }


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.default is not argparse.SUPPRESS]


def default_text(action: argparse.Action) -> str:
    """The default as the table shows it: the value, or (None) what the help says happens."""
    from utils.cli import show_default, stated_default

    if action.default is not None:
        return show_default(action.default)
    return stated_default(action.help or "") or "none"


def flags_table() -> str:
    out = []
    for command, parser in parsers().items():
        out += [f"### `{command}`", "", "| flag | default |", "|---|---|"]
        for action in options(parser):
            names = ", ".join(f"`{name}`" for name in action.option_strings)
            out.append(f"| {names} | {default_text(action).replace('|', '/')} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def test_every_flag_states_its_default_in_help():
    """Each flag's --help ends in its default, or says it in words as "default: <what>" (a default that
    depends on the machine, the checkpoint or other flags), which docs/flags.md then shows."""
    from utils.cli import stated_default

    missing, unresolved = [], []
    for command, parser in parsers().items():
        formatter = parser._get_formatter()
        for action in options(parser):
            text = formatter._get_help_string(action) % {"default": action.default, "prog": command}
            if not stated_default(text):
                missing.append(f"{command} {action.option_strings[0]}")
            # A flag left unset resolves to something unless its help says what "none" means.
            if action.default is None and default_text(action) == "none" and "(default: none)" not in text:
                unresolved.append(f"{command} {action.option_strings[0]}")
    assert missing == [] and unresolved == []


def test_the_flags_table_shows_what_a_default_resolves_to():
    """The table gives, for a flag whose default is resolved at run time, the rule, not a word picked
    from its sentence (export.py --input-size once read "to", from "the runtimes then default to")."""
    import export

    rows = {a.option_strings[0]: default_text(a) for a in options(export.get_args_parser())}
    assert rows["--input-size"] == "the crop the checkpoint records, else the authors' 384,384"


def test_the_help_shows_the_parsers_defaults():
    """What --help prints, by value: a size as H,W, a switch as on/off."""
    from training.flags import get_args_parser
    from utils import recipe

    text = " ".join(get_args_parser().format_help().split())
    assert f"(default: {recipe.INPUT_SIZE[0]},{recipe.INPUT_SIZE[1]})" in text
    assert f"(default: {recipe.BATCH_SIZE})" in text and "--compile torch.compile" in text
    assert f"(default: {recipe.SNAPSHOT_DIR})" in text


def test_flags_doc_matches_the_parsers():
    text = FLAGS_DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{FLAGS_DOC}: the markers {START} / {END} are missing"
    documented = text.split(START, 1)[1].split(END, 1)[0].strip() + "\n"
    expected = flags_table()
    assert documented == expected, (
        f"{FLAGS_DOC} is out of date; between the markers it should read:\n\n{expected}"
    )


def _doc_files() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "*.md", "requirements*.txt", "environment.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in tracked]


def _tracked() -> set[str]:
    return set(
        subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    )


PATH = re.compile(r"(?<![\w./-])((?:[A-Za-z_][\w-]*/)+[\w.-]+\.(?:py|sh|md|txt|yaml|toml))\b")
MODULE = re.compile(r"`((?:utils|dataset|networks|inference|training|libs|bench)(?:\.[A-Za-z_]\w*)+)")
# Paths the docs name as things a run writes or a user puts there, not files of the repository.
NOT_TRACKED = ("snapshots/", "outputs/", ".venv/", "dataset/Cartoon_sketches/", "../", "my_data/")


def test_files_named_in_the_docs_exist():
    tracked = _tracked()
    stale = [
        f"{doc.relative_to(ROOT)}: {path}"
        for doc in _doc_files()
        for path in PATH.findall(doc.read_text(encoding="utf-8"))
        if not path.startswith(NOT_TRACKED) and path not in tracked and not (ROOT / path).exists()
    ]
    assert stale == []


def test_modules_and_names_in_the_docs_exist():
    modules = {}
    for name in _tracked():
        if name.endswith(".py"):
            parts = name[:-3].split("/")
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ROOT / name
    stale = []
    for doc in _doc_files():
        for dotted in MODULE.findall(doc.read_text(encoding="utf-8")):
            parts = dotted.split(".")
            known = next((k for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in modules), 0)
            if not known:
                stale.append(f"{doc.relative_to(ROOT)}: {dotted} (no such module)")
                continue
            if known < len(parts) and parts[known] not in ("py", "md"):
                source = modules[".".join(parts[:known])].read_text(encoding="utf-8")
                name = parts[known]
                if not re.search(
                    rf"^\s*(def|class) {name}\b|^\s*{name}\b\s*[:=]|\bimport\b.*\b{name}\b", source, re.M
                ):
                    stale.append(
                        f"{doc.relative_to(ROOT)}: {dotted} (no {name} in {'.'.join(parts[:known])})"
                    )
    assert stale == []


def test_the_checks_catch_a_stale_name(tmp_path):
    """The patterns find what a stale doc would say."""
    assert PATH.findall("see `utils/setup_env.sh` and utils/inference.py") == [
        "utils/setup_env.sh",
        "utils/inference.py",
    ]
    assert MODULE.findall("`utils.engine.poly_lr` and `training.schedule.poly_lr`") == [
        "utils.engine.poly_lr",
        "training.schedule.poly_lr",
    ]


if __name__ == "__main__":
    print(flags_table())


def test_long_modules_are_the_ones_design_md_names():
    """docs/design.md's rule: modules stay under 400 lines, except those its paragraph names."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    paragraph = text[text.index("Modules stay under 400 lines") :].split("\n\n")[0]
    named = set(re.findall(r"`([\w/]+\.py)`", paragraph))
    long = {
        name
        for name in _tracked()
        if name.endswith(".py")
        and not name.startswith(("tests/", "bench/"))
        and len((ROOT / name).read_text(encoding="utf-8").splitlines()) > 400
    }
    assert long - named == set(), f"over 400 lines but not named in docs/design.md: {sorted(long - named)}"


def test_the_readme_stays_a_front_page():
    """README.md is the front page (at most 200 lines); the detail lives in docs/, which it links."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail to docs/"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", "\n".join(lines)))
    assert linked >= {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}, linked
