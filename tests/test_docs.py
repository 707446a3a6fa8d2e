"""The README and the pages under docs/ stay true to the code, without training anything.

- Every `python train.py ...` and `python eval.py ...` they show (code blocks, inline code, `make
  train ARGS="..."`, after `srun`, `sbatch --wrap "..."` or `VAR=value`) composes with Hydra, each
  job of a sweep on its own, and passes vaelab's config check. A command marked `# refused:
  <message>` must be refused, by vaelab's check or by Hydra, with that message (`...` in it stands
  for any text). Placeholders (`<dir>`, `<file>`, `<run dir>`, `...`) become real temporary paths.
- Every relative link and image resolves to a file, and each `#anchor` to one of its headings.
- Each docs page starts with a line that says what it covers and links back to the README; the
  README stays at most 250 lines.
"""

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import REPO
from vaelab.catalog import ARCHITECTURE, MODEL_TYPES, ModelType
from vaelab.config import check_eval_config, check_train_config
from vaelab.errors import VaelabError
from vaelab.tasks.cli import hydra_refusal

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


# -- reading markdown ------------------------------------------------------------------------------

@dataclass
class Block:
    """A fenced code block: its info string, first line number (1-based) and text."""
    lang: str
    line: int
    text: str
    before: str  # the prose just above it


@dataclass
class Page:
    path: Path
    code: dict[int, str] = field(default_factory=dict)    # line number → a line of a code block
    prose: dict[int, str] = field(default_factory=dict)   # line number → a line outside code blocks
    fenced: list[Block] = field(default_factory=list)


def read_page(path: Path) -> Page:
    page, fence, previous_is_code, blank_before = Page(path), None, False, True
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip().startswith(fence[0]):
                page.fenced.append(Block(fence[1], fence[2], "\n".join(fence[3]), fence[4]))
                fence = None
            else:
                page.code[number] = line
                fence[3].append(line)
            continue
        opening = re.match(r"\s*(```|~~~)\s*(\S*)", line)
        if opening:
            above = "\n".join(lines[max(0, number - 4):number - 1])
            fence = (opening.group(1), opening.group(2), number + 1, [], above)
            continue
        indented = line.startswith("    ") and line.strip()
        if indented and (blank_before or previous_is_code):  # an indented code block (also in a list)
            page.code[number] = line
            previous_is_code = True
        elif line.strip():
            page.prose[number] = line
            previous_is_code = False
        blank_before = not line.strip()
    return page


def paragraphs(page: Page):
    """Runs of consecutive prose lines: (first line number, their text joined with newlines)."""
    numbers = sorted(page.prose)
    start = None
    for i, number in enumerate(numbers):
        if start is None:
            start, chunk = number, [page.prose[number]]
        else:
            chunk.append(page.prose[number])
        if i + 1 == len(numbers) or numbers[i + 1] != number + 1:
            yield start, "\n".join(chunk)
            start = None


def inline_spans(page: Page):
    """(line number, text) of each inline code span in the prose."""
    for start, text in paragraphs(page):
        for match in re.finditer(r"(`+)(.+?)\1", text, flags=re.S):
            yield start + text.count("\n", 0, match.start()), match.group(2).replace("\n", " ")


# -- the commands ----------------------------------------------------------------------------------

COMMAND = re.compile(r"""(?P<quote>["']?)(?:\.venv/bin/)?python3?\ (?P<script>train|eval)\.py(?=\s|$|["'])
                          (?P<rest>.*)""", flags=re.X)
MAKE_TRAIN = re.compile(r"""make train ARGS=(?P<quote>["'])(?P<rest>.*?)(?P=quote)""")
PLACEHOLDER = re.compile(r"<[^<>\n]*>|\.\.\.|…")
REFUSED = re.compile(r"#\s*refused(?::\s*(?P<message>.*))?$")


@dataclass
class Command:
    where: str          # file:line
    script: str         # train or eval
    args: str           # what follows the script, comments stripped
    refused: Optional[str]  # None: must be accepted; "": must be refused; else: with this message
    page: Path

    def __str__(self) -> str:
        return f"python {self.script}.py {self.args}".strip()


def _comment_start(text: str) -> int:
    """Where an unquoted shell comment (`#` after a blank) begins in `text`, or len(text)."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return i
    return len(text)


def _commands_in(text: str, where: str, page: Path, code: bool) -> list[Command]:
    found = []
    comment_at = _comment_start(text) if code else len(text)
    comment = text[comment_at:]
    refused = REFUSED.search(comment)
    for match in COMMAND.finditer(text):
        if match.start() >= comment_at:  # `# ... python train.py` in a comment is prose
            continue
        rest = match.group("rest")
        if match.group("quote"):  # sbatch --wrap "python train.py ...": up to the closing quote
            rest = rest.split(match.group("quote"), 1)[0]
        else:
            rest = rest[:max(0, comment_at - match.start("rest"))]
        found.append(Command(where, match.group("script"), rest.strip(),
                             None if refused is None else (refused.group("message") or "").strip(), page))
    for match in MAKE_TRAIN.finditer(text):
        if match.start() < comment_at:
            found.append(Command(where, "train", match.group("rest").strip(), None, page))
    return found


def commands(page: Page) -> list[Command]:
    found = []
    numbers = sorted(page.code)
    skip = set()
    for number in numbers:
        if number in skip:
            continue
        line, last = page.code[number], number
        while line[:_comment_start(line)].rstrip().endswith("\\") and last + 1 in page.code:  # continued
            last += 1
            skip.add(last)
            line = line[:_comment_start(line)].rstrip()[:-1] + " " + page.code[last].strip()
        found += _commands_in(line, f"{_name(page.path)}:{number}", page.path, code=True)
    for number, span in inline_spans(page):
        found += _commands_in(span, f"{_name(page.path)}:{number}", page.path, code=False)
    seen: dict[str, int] = {}
    for command in found:  # two commands on one line: :12, :12#2
        seen[command.where] = seen.get(command.where, 0) + 1
        if seen[command.where] > 1:
            command.where += f"#{seen[command.where]}"
    return found


PAGE_COMMANDS = [command for page in PAGES for command in commands(read_page(page))]


# -- what a page adds (the model type of docs/extending.md) ----------------------------------------

def _balanced_call(text: str, name: str) -> list[str]:
    calls = []
    for match in re.finditer(rf"\b{name}\(", text):
        depth = 0
        for i in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                calls.append(text[match.start():i + 1])
                break
    return calls


def additions(path: Path) -> tuple[dict[str, str], dict[str, ModelType]]:
    """The config files (`conf/<group>/<name>.yaml`, from a yaml block that the text above names)
    and the model types (`ModelType(...)` in a python block) that a page tells the reader to add:
    the page's commands run with them added, as the reader's would."""
    configs, types = {}, {}
    for block in read_page(path).fenced:
        named = re.findall(r"conf/(\w+)/(\w+)\.yaml", block.before)
        if block.lang in ("yaml", "yml") and named:
            configs["/".join(named[-1])] = block.text
        if block.lang == "python":
            for call in _balanced_call(block.text, "ModelType"):
                declared = eval(call, {"ModelType": ModelType, "ARCHITECTURE": ARCHITECTURE})  # noqa: S307 (our docs)
                types[declared.name] = declared
    return configs, types


# -- filling in placeholders -----------------------------------------------------------------------

@dataclass
class Paths:
    tmp: Path
    image_dir: Path
    npz: Path
    ckpt: Path


@pytest.fixture
def paths(tmp_path, monkeypatch) -> Paths:
    """Real things for the placeholders; the commands run from an empty folder."""
    from PIL import Image

    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((28, 28), 40 * i + 100, dtype=np.uint8)).save(images / label / f"{i}.png")
    npz = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8), y=np.arange(8) % 2)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"  # what eval's check reads of a checkpoint
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"name": "vae", "pixel_range": [0.0, 1.0]}}, ckpt)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as the docs' refused eval.device=cuda says
    return Paths(tmp_path, images, npz, ckpt)


def _fill(key: str, placeholder: str, data_group: Optional[str], paths: Paths) -> str:
    """A real value for `placeholder` in `key=...`."""
    key = key.lstrip("+~")
    if key == "ckpt_path":
        return str(paths.ckpt)
    wants_file = "file" in placeholder or (key == "data.path" and data_group == "npz")
    if key == "data.path" or (key.startswith("data.") and key.endswith("_dir")):
        return str(paths.npz if wants_file else paths.image_dir)
    if key in ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir", "paths.root_dir"):
        return str(paths.tmp / "out")
    if "file" in placeholder:
        return str(paths.npz)
    if "dir" in placeholder:
        return str(paths.image_dir)
    return re.sub(r"\W+", "_", placeholder.strip("<>.… ")) or "x"


def parse(command: Command, paths: Paths) -> tuple[list[str], bool, dict[str, str]]:
    """The overrides of `command` with its placeholders filled, whether it is a sweep (-m), and
    what each placeholder became (for the message of a refused command)."""
    marks: dict[str, str] = {}

    def mark(match: re.Match) -> str:
        token = f"PLACEHOLDER{len(marks)}X"
        marks[token] = match.group(0)
        return token

    tokens = shlex.split(PLACEHOLDER.sub(mark, command.args))
    multirun, overrides, skip_next = False, [], False
    for token in tokens:
        if skip_next:
            skip_next = False
        elif token in ("-m", "--multirun"):
            multirun = True
        elif token in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"):
            skip_next = True  # a Hydra flag with an argument: the command still composes
        elif token.startswith("-"):
            continue  # --help, --info, --resolve, ...
        elif "=" not in token and re.fullmatch(r"(PLACEHOLDER\d+X)+", token):
            continue  # "<the member's overrides>", "...": stands for overrides of the reader's own
        else:
            overrides.append(token)
    data_group = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == "data"), None)
    filled, used = [], {}
    for override in overrides:
        key, eq, value = override.partition("=")
        if eq and "PLACEHOLDER" in value:
            parts = []
            for part in value.split(","):
                found = re.findall(r"PLACEHOLDER\d+X", part)
                if not found:
                    parts.append(part)
                    continue
                real = _fill(key, marks[found[0]], data_group, paths)
                if key.lstrip("+~") == "ckpt_path" or "dir" in key or key.endswith("path"):
                    parts.append(real)  # a path with a placeholder in it: the whole path is the real one
                else:
                    for token in found:
                        part = part.replace(token, real)
                    parts.append(part)
                used.update({marks[token]: real for token in found})
            value = ",".join(parts)
        filled.append(f"{key}{eq}{value}")
    return filled, multirun, used


def _compose(config: str, overrides: list[str]):
    return compose(config_name=config, overrides=list(overrides), return_hydra_config=True)


def jobs(config: str, overrides: list[str], multirun: bool) -> tuple[list[list[str]], DictConfig]:
    """The overrides of each job the command runs: one for a single run; for a sweep, every
    combination of the command line's sweeps and the basic sweeper's `params` of the config (an
    experiment such as beta_sweep is a sweep by itself). Optuna's searches: their first job, as
    composed (the sampled keys at the config's values). Also the first job's config, composed."""
    parsed = OverridesParser.create().parse_overrides(overrides)  # raises for what Hydra cannot read
    sweeps = any(o.is_sweep_override() for o in parsed)
    if sweeps and not multirun:  # Hydra refuses it the same way when it runs
        _compose(config, overrides)
    first = [o.input_line for o in parsed] if not sweeps else BasicSweeper.split_arguments(parsed, None)[0][0]
    cfg = _compose(config, first)
    sweeper = OmegaConf.select(cfg, "hydra.sweeper", default=None)
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    multirun = multirun or str(OmegaConf.select(cfg, "hydra.mode", default="")) == "RunMode.MULTIRUN"
    basic = sweeper is not None and str(sweeper.get("_target_", "")).endswith("BasicSweeper")
    if not multirun or not (sweeps or (basic and params)):
        return [list(first)], cfg
    given = [f"{key}={value}" for key, value in params.items()] if basic else []
    parsed = OverridesParser.create().parse_overrides([*given, *overrides])
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch], cfg


def refusal(command: Command, paths: Paths, config_dir: Path) -> tuple[Optional[str], int]:
    """The first message that Hydra or vaelab's check refuses the command with (None: accepted),
    and the number of jobs checked."""
    overrides, multirun, _ = parse(command, paths)
    config = "eval" if command.script == "eval" else "train"
    check = check_eval_config if config == "eval" else check_train_config
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            each, first = jobs(config, overrides, multirun)
            for i, job in enumerate(each):
                cfg = first if i == 0 and len(each) == 1 else _compose(config, job)
                with open_dict(cfg):
                    del cfg["hydra"]
                check(cfg)
    except Exception as err:
        message = hydra_refusal(err)
        if message is not None:
            return message, 0
        if isinstance(err, VaelabError):
            return str(err), 0
        raise
    finally:
        GlobalHydra.instance().clear()
    return None, len(each)


def _matches(message: str, shown: str) -> bool:
    """`shown` (from the docs) is `message`, where `...` in `shown` stands for any text."""
    pattern = ".*".join(re.escape(part.strip()) for part in re.split(r"\.\.\.|…", shown))
    return re.fullmatch(pattern, message.strip(), flags=re.S) is not None


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory) -> dict[Path, Path]:
    """conf/ for each page; for a page that tells the reader to write config files, a copy of
    conf/ with them written."""
    dirs = {}
    for page in PAGES:
        configs, _ = additions(page)
        if not configs:
            dirs[page] = REPO / "conf"
            continue
        copy = tmp_path_factory.mktemp("conf") / "conf"
        shutil.copytree(REPO / "conf", copy)
        for name, text in configs.items():
            (copy / f"{name}.yaml").write_text(text + "\n")
        dirs[page] = copy
    return dirs


_CHECKED: dict[tuple, tuple[Optional[str], int]] = {}  # a command shown on several pages is composed once


@pytest.mark.parametrize("command", PAGE_COMMANDS, ids=[c.where for c in PAGE_COMMANDS])
def test_each_command_in_the_docs_composes_and_is_checked_as_shown(command, paths, config_dirs, monkeypatch):
    for name, declared in additions(command.page)[1].items():  # the model type the page adds
        monkeypatch.setitem(MODEL_TYPES, name, declared)
    key = (config_dirs[command.page], command.script, command.args)
    if key not in _CHECKED or command.refused is not None:  # a refusal's message names this test's paths
        _CHECKED[key] = refusal(command, paths, config_dirs[command.page])
    message, n_jobs = _CHECKED[key]
    if command.refused is None:
        assert message is None, f"{command.where}: `{command}` is refused: {message}"
        assert n_jobs >= 1
        return
    assert message is not None, f"{command.where}: `{command}` is marked refused, but vaelab accepts it"
    if command.refused:
        shown = command.refused
        for placeholder, real in parse(command, paths)[2].items():
            shown = shown.replace(placeholder, real) if placeholder not in ("...", "…") else shown
        assert _matches(message, shown), \
            f"{command.where}: `{command}` is refused with\n  {message}\nthe docs show\n  {shown}"


def test_the_docs_show_commands_of_both_entry_points_and_refused_ones():
    """The extraction above finds what it should: otherwise the test above checks nothing."""
    scripts = {c.script for c in PAGE_COMMANDS}
    assert scripts == {"train", "eval"}
    assert sum(c.refused is not None for c in PAGE_COMMANDS) >= 5
    assert any(c.page.name == "README.md" and c.args == "" for c in PAGE_COMMANDS)  # `python train.py`


# -- links -------------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links reduced to their text, lower case, punctuation removed
    (letters of any script, digits, `_` and `-` stay), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, counts = set(), {}
    for line in read_page(path).prose.values():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path):
    """(line, target) of each markdown link and image outside code."""
    for start, text in paragraphs(read_page(page)):
        text = re.sub(r"(`+)(.+?)\1", lambda m: "x" * len(m.group(0)), text, flags=re.S)  # not in inline code
        for match in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
            yield start + text.count("\n", 0, match.start()), match.group(1)


PAGE_LINKS = [(page, line, target) for page in PAGES for line, target in links(page)
              if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # not http:, https:, mailto:


@pytest.mark.parametrize(("page", "line", "target"), PAGE_LINKS,
                         ids=[f"{_name(p)}:{n}:{t}" for p, n, t in PAGE_LINKS])
def test_each_relative_link_resolves(page, line, target):
    where, _, anchor = target.partition("#")
    path = (page.parent / where).resolve() if where else page
    assert path.exists(), f"{_name(page)}:{line}: {target} does not exist"
    if anchor:
        assert path.suffix == ".md", f"{_name(page)}:{line}: {target}: an anchor into a file that is not markdown"
        assert anchor in anchors(path), \
            f"{_name(page)}:{line}: {target}: no such heading; the anchors are {sorted(anchors(path))}"


def test_links_were_found():
    assert len(PAGE_LINKS) >= 20 and any("#" in target for _, _, target in PAGE_LINKS)


def test_the_anchor_of_a_heading_follows_github():
    assert slug("Stacked sweeps: a β × seed study as one model") == "stacked-sweeps-a-β--seed-study-as-one-model"
    assert slug("Which decoder likelihood (`model.recon_loss`)") == "which-decoder-likelihood-modelrecon_loss"
    assert slug("Weights & Biases") == "weights--biases"


# -- shape of the pages ------------------------------------------------------------------------------

def test_the_readme_is_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move some into a page under docs/"


@pytest.mark.parametrize("page", PAGES[1:], ids=_name)
def test_each_page_says_what_it_covers_and_links_back_to_the_readme(page):
    lines = [line for line in page.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# "), f"{_name(page)} starts with {lines[0]!r}, not its title"
    assert "](../README.md)" in lines[1], f"{_name(page)}: the line after the title does not link back to the README"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for _, target in links(REPO / "README.md")}
    assert not [_name(page) for page in PAGES[1:] if page.resolve() not in linked]
