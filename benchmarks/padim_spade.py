"""adlearn's PaDiM and SPADE next to naive references (and anomalib's Padim), on the same data.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 .venv/bin/python benchmarks/padim_spade.py \
        --anomalib-python /work/anomalib-venv/bin/python

Every variant sees the same synthetic category (``fabric``), image size, backbone weights (the
offline ImageNet ``tf_efficientnet_lite0``, layers 1–3) and PaDiM channel subset, and each
measurement runs in a fresh process with one thread, so that peak memory (``VmHWM`` from
``/proc/self/status``) belongs to that variant alone and the speed ratios are meaningful:

* ``adlearn PaDiM`` / ``adlearn SPADE`` — the package;
* ``naive PaDiM`` — the popular repository's recipe (xiahaifeng1995): keep every training feature
  map, concatenate, ``numpy.cov`` per position, ``numpy.linalg.inv`` and SciPy's ``mahalanobis``
  in Python loops over positions and images (the whole test set at once, as that code does);
* ``naive SPADE`` — byungjae89's recipe: every training feature map kept in float32, the
  retrieved images' gallery scanned in blocks of 100 vectors (all of them, remainder included,
  with distances over channels — the repository's two bugs fixed, so that scores are comparable);
* ``anomalib Padim`` — anomalib's torch model (``PadimModel``, raw scores, no Lightning), run by
  the interpreter given in ``--anomalib-python`` (a separate venv; never the project's).

It writes ``benchmarks/results/padim_spade.{md,json}``: fit seconds, predict ms/image, peak RSS
(whole process, and the extra memory of the predict phase alone), image/pixel AUROC, and the
agreement of each reference with adlearn (Pearson and Spearman of the image scores, largest
difference of the anomaly maps). The references live here, not in the package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
VARIANTS = ("adlearn PaDiM", "naive PaDiM", "anomalib Padim", "adlearn SPADE", "naive SPADE")
COMMAND = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 .venv/bin/python benchmarks/padim_spade.py"
PREDICT_BATCH = 8
FIT_BATCH = 16


# --- measuring (runs in every worker, also under anomalib's interpreter) ---------------------
def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so the next peak is the predict phase's own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class PathDataset(torch.utils.data.Dataset):
    """Training images read on demand from PNG files (no resize: they are generated at size)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": read_image(self.paths[i]), "label": 0}


def read_image(path: str) -> torch.Tensor:
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _loader(job: dict) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(PathDataset(job["train"]), batch_size=FIT_BATCH)


def _batches(images: torch.Tensor):
    for i in range(0, len(images), PREDICT_BATCH):
        yield images[i : i + PREDICT_BATCH]


def run_worker(job_path: str) -> None:
    """Fit and predict one variant, write ``result.json`` and ``outputs.npz`` next to the job."""
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    fit, predict = WORKERS[job["variant"]](job)
    test = torch.stack([read_image(p) for p in job["test"]])
    rss_start = _status_mib("VmRSS")
    start = time.perf_counter()
    fit()
    fit_s = time.perf_counter() - start
    peak_fit, rss_fitted = _status_mib("VmHWM"), _status_mib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    scores, maps = predict(test)
    predict_s = time.perf_counter() - start
    peak_predict = _status_mib("VmHWM")
    out = Path(job_path).parent
    np.savez(out / "outputs.npz", scores=np.asarray(scores, np.float32), maps=np.asarray(maps, np.float32))
    (out / "result.json").write_text(
        json.dumps(
            {
                "fit_s": fit_s,
                "predict_ms_per_image": 1000 * predict_s / len(test),
                "peak_rss_mib": max(peak_fit, peak_predict),
                "rss_before_fit_mib": rss_start,
                "rss_after_fit_mib": rss_fitted,
                "predict_extra_peak_mib": peak_predict - rss_fitted,
                **job.get("extra", {}),
            }
        )
    )


# --- the variants ------------------------------------------------------------------------------
def adlearn_padim(job: dict):
    from adlearn.models import PaDiM

    model = PaDiM(backbone=job["backbone"], pretrained="auto", batch_size=FIT_BATCH, device="cpu")
    model._ensure_built(load_weights=True)  # the backbone is created before timing, as for the others

    def predict(test):
        p = model.predict(test, batch_size=PREDICT_BATCH)
        return p.score.numpy(), p.anomaly_map.numpy()

    return (lambda: model.fit(_loader(job))), predict


def adlearn_spade(job: dict):
    from adlearn.models import SPADE

    model = SPADE(backbone=job["backbone"], pretrained="auto", k=job["k"], batch_size=FIT_BATCH, device="cpu")
    model._ensure_built(load_weights=True)

    def fit():
        model.fit(_loader(job))
        job.setdefault("extra", {})["gallery_mib"] = model.gallery.nbytes / 2**20

    def predict(test):
        p = model.predict(test, batch_size=PREDICT_BATCH)
        return p.score.numpy(), p.anomaly_map.numpy()

    return fit, predict


def _reference_features(job: dict):
    from adlearn.backbones import FeatureExtractor

    fx = FeatureExtractor(job["backbone"], layers=(1, 2, 3, 4), pretrained="auto")
    return lambda images: [f.float() for f in fx(images)]


def _blur(maps: torch.Tensor) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(m, sigma=4, mode="mirror") for m in maps.numpy()])


def naive_padim(job: dict):
    from scipy.spatial.distance import mahalanobis

    features = _reference_features(job)
    idx = torch.tensor(job["channel_idx"])
    state: dict = {}

    def embed(layer_outputs: list[torch.Tensor]) -> torch.Tensor:
        grid = layer_outputs[0].shape[-2:]
        full = torch.cat(
            [torch.nn.functional.interpolate(f, size=grid, mode="nearest") for f in layer_outputs], 1
        )
        return full[:, idx]

    def fit():
        outputs: list[list[torch.Tensor]] = [[], [], []]
        with torch.no_grad():
            for batch in _loader(job):
                for store, f in zip(outputs, features(batch["image"])[:3]):
                    store.append(f)
        embedding = embed([torch.cat(o) for o in outputs])  # every training embedding at once
        n, c, h, w = embedding.shape
        x = embedding.reshape(n, c, h * w).numpy()
        state["mean"] = x.mean(0)
        state["cov"] = np.zeros((c, c, h * w))
        for i in range(h * w):
            state["cov"][:, :, i] = np.cov(x[:, :, i], rowvar=False) + 0.01 * np.eye(c)

    def predict(test):
        with torch.no_grad():
            embedding = torch.cat([embed(features(b)[:3]) for b in _batches(test)])
        b, c, h, w = embedding.shape
        x = embedding.reshape(b, c, h * w).numpy()
        distances = []
        for i in range(h * w):
            inverse = np.linalg.inv(state["cov"][:, :, i])
            distances.append([mahalanobis(sample[:, i], state["mean"][:, i], inverse) for sample in x])
        dist = torch.tensor(np.array(distances).T.reshape(b, h, w), dtype=torch.float32)
        up = torch.nn.functional.interpolate(
            dist[:, None], size=test.shape[-2:], mode="bilinear", align_corners=False
        )
        maps = _blur(up[:, 0])
        return maps.max(axis=(1, 2)), maps

    return fit, predict


def naive_spade(job: dict):
    features = _reference_features(job)
    state: dict = {}

    def fit():
        outputs: list[list[torch.Tensor]] = [[], [], [], []]
        with torch.no_grad():
            for batch in _loader(job):
                *pyramid, last = features(batch["image"])
                for store, f in zip(outputs, [*pyramid, last.mean(dim=(2, 3))]):
                    store.append(f)
        state["train"] = [torch.cat(o) for o in outputs]  # float32, every training image

    def pixel_distance(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        best = torch.full((len(query),), float("inf"))
        for start in range(0, len(gallery), 100):  # blocks of 100, remainder included
            best = torch.minimum(best, torch.cdist(query, gallery[start : start + 100]).min(1).values)
        return best

    def predict(test):
        *train_pyramid, train_global = state["train"]
        scores, maps = [], []
        with torch.no_grad():
            test_features = [torch.cat(f) for f in zip(*(features(b) for b in _batches(test)))]
            *test_pyramid, test_last = test_features
            for i in range(len(test)):
                knn = torch.cdist(test_last[i : i + 1].mean(dim=(2, 3)), train_global)[0].topk(
                    job["k"], largest=False
                )
                scores.append(knn.values.mean().item())
                layer_maps = []
                for test_f, train_f in zip(test_pyramid, train_pyramid):
                    gallery = train_f[knn.indices].permute(0, 2, 3, 1).reshape(-1, train_f.shape[1])
                    d = pixel_distance(test_f[i].flatten(1).T, gallery).view(1, 1, *test_f.shape[-2:])
                    layer_maps.append(
                        torch.nn.functional.interpolate(
                            d, size=test.shape[-2:], mode="bilinear", align_corners=False
                        )[0, 0]
                    )
                maps.append(torch.stack(layer_maps).mean(0))
        return np.array(scores), _blur(torch.stack(maps))

    return fit, predict


def anomalib_padim(job: dict):
    from anomalib.models.image.padim.torch_model import PadimModel

    model = PadimModel(
        backbone=job["backbone"], layers=[1, 2, 3], pre_trained=False, n_features=len(job["channel_idx"])
    )
    model.feature_extractor.feature_extractor.load_state_dict(
        torch.load(job["backbone_state"], weights_only=True)
    )
    model.idx = torch.tensor(job["channel_idx"])
    mean = torch.tensor(job["norm_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(job["norm_std"]).view(1, 3, 1, 1)

    def fit():
        model.train()
        for batch in _loader(job):
            model((batch["image"] - mean) / std)
        model.fit()
        model.eval()

    def predict(test):
        with torch.no_grad():
            outs = [model((b - mean) / std) for b in _batches(test)]
        return (
            torch.cat([o.pred_score.reshape(-1) for o in outs]).numpy(),
            torch.cat([o.anomaly_map[:, 0] for o in outs]).numpy(),
        )

    return fit, predict


WORKERS = {
    "adlearn PaDiM": adlearn_padim,
    "naive PaDiM": naive_padim,
    "anomalib Padim": anomalib_padim,
    "adlearn SPADE": adlearn_spade,
    "naive SPADE": naive_spade,
}


# --- the driver ----------------------------------------------------------------------------------
def _shared_setup(args, workdir: Path) -> dict:
    """Data paths, the PaDiM channel subset and the backbone weights every variant uses."""
    from adlearn.datasets import MVTecAD, make_synthetic
    from adlearn.models import PaDiM

    root = make_synthetic(
        categories=[args.category],
        image_size=args.image_size,
        n_train=max(args.sizes),
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        seed=0,
    )
    train = MVTecAD(root, args.category, "train", image_size=args.image_size)
    test = MVTecAD(root, args.category, "test", image_size=args.image_size)
    padim = PaDiM(backbone=args.backbone, pretrained="auto", device="cpu")
    padim._ensure_built(load_weights=True)
    fx = padim.feature_extractor
    torch.save(fx.model.state_dict(), workdir / "backbone.pt")
    return {
        "train_all": [str(s.path) for s in train.samples],
        "test": [str(s.path) for s in test.samples],
        "labels": np.array(test.labels),
        "masks": torch.stack([test[i]["mask"][0] for i in range(len(test))]).numpy(),
        "channel_idx": padim._select_channels().tolist(),
        "backbone_state": str(workdir / "backbone.pt"),
        "norm_mean": fx.mean.flatten().tolist(),
        "norm_std": fx.std.flatten().tolist(),
        "pretrained": bool(fx.pretrained),
    }


def _run(variant: str, n: int, shared: dict, args, workdir: Path) -> dict | None:
    folder = workdir / f"{variant.replace(' ', '_')}_{n}"
    folder.mkdir()
    job = {
        "variant": variant,
        "n": n,
        "train": shared["train_all"][:n],
        "threads": args.threads,
        "k": args.k,
        "backbone": args.backbone,
        **{k: shared[k] for k in ("test", "channel_idx", "backbone_state", "norm_mean", "norm_std")},
    }
    (folder / "job.json").write_text(json.dumps(job))
    python = args.anomalib_python if variant.startswith("anomalib") else sys.executable
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "HF_HUB_OFFLINE": "1",
        "ADLEARN_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    print(f"{variant}, N={n} …", end=" ", flush=True)
    done = subprocess.run(
        [python, __file__, "--worker", str(folder / "job.json")], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        print("failed:\n" + done.stderr[-3000:])
        return None
    result = json.loads((folder / "result.json").read_text())
    outputs = np.load(folder / "outputs.npz")
    print(
        f"fit {result['fit_s']:.1f} s, predict {result['predict_ms_per_image']:.0f} ms/image, "
        f"peak {result['peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    return {
        "method": variant,
        "n_train": n,
        **result,
        "scores": outputs["scores"].astype(np.float64),
        "maps": outputs["maps"],
    }


def _accuracy(row: dict, shared: dict) -> None:
    from adlearn.metrics import image_auroc, pixel_auroc

    row["image_auroc"] = image_auroc(row["scores"], shared["labels"])
    row["pixel_auroc"] = pixel_auroc(row["maps"], shared["masks"])


def _agreement(ours: dict, ref: dict) -> dict:
    from scipy.stats import pearsonr, spearmanr

    diff = np.abs(ours["maps"] - ref["maps"])
    return {
        "ours": ours["method"],
        "reference": ref["method"],
        "n_train": ours["n_train"],
        "pearson": float(pearsonr(ours["scores"], ref["scores"])[0]),
        "spearman": float(spearmanr(ours["scores"], ref["scores"])[0]),
        "map_max_abs_diff": float(diff.max()),
        "map_max_rel_diff": float(diff.max() / np.abs(ref["maps"]).max()),
        "score_max_abs_diff": float(np.abs(ours["scores"] - ref["scores"]).max()),
    }


def _markdown(rows: list[dict], agreement: list[dict], ratios: list[dict], meta: dict) -> str:
    lines = [
        "# PaDiM and SPADE: adlearn vs naive references vs anomalib",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Data: synthetic `{meta['category']}`, {meta['image_size']} px, {meta['n_test']} test images "
        f"({meta['n_defective']} defective); backbone `{meta['backbone']}` (ImageNet weights: "
        f"{meta['pretrained']}), layers 1–3, PaDiM d={meta['d']}, SPADE K={meta['k']}, κ=1; "
        f"{meta['threads']} thread(s), each row a fresh process. Machine: {meta['machine']}. "
        "Compare ratios within this run, not absolute times across machines.",
        "",
        "| method | N train | fit s | predict ms/img | fit+predict s | peak RSS MiB | predict extra MiB "
        "| image AUROC | pixel AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        total = r["fit_s"] + r["predict_ms_per_image"] * meta["n_test"] / 1000
        lines.append(
            f"| {r['method']} | {r['n_train']} | {r['fit_s']:.2f} | {r['predict_ms_per_image']:.1f} | "
            f"{total:.2f} | {r['peak_rss_mib']:.0f} | {r['predict_extra_peak_mib']:.0f} | "
            f"{r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} |"
        )
    lines += [
        "",
        "**Ratios** (fit+predict time, reference ÷ adlearn: > 1 means adlearn is faster; peak RSS "
        "N=max ÷ N=min):",
        "",
        "| comparison | value |",
        "|---|---|",
    ]
    lines += [f"| {r['what']} | {r['value']:.2f} |" for r in ratios]
    lines += [
        "",
        "**Agreement with adlearn** (same weights and channels; maps in distance units):",
        "",
        "| adlearn | reference | N | Pearson (scores) | Spearman (scores) | max abs score diff "
        "| max abs map diff | max map diff ÷ map max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {a['ours']} | {a['reference']} | {a['n_train']} | {a['pearson']:.6f} | {a['spearman']:.6f} | "
        f"{a['score_max_abs_diff']:.2e} | {a['map_max_abs_diff']:.2e} | {a['map_max_rel_diff']:.2e} |"
        for a in agreement
    ]
    spade = [r for r in rows if r["method"] == "adlearn SPADE"]
    if spade:
        lines += [
            "",
            "**SPADE memory vs N**: the gallery (float16 feature maps of layers 1–3) grows linearly; the "
            "predict phase's own extra memory stays bounded by the chunk size.",
            "",
            "| N train | gallery MiB | peak RSS MiB | predict extra MiB |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['n_train']} | {r['gallery_mib']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['predict_extra_peak_mib']:.0f} |"
            for r in spade
        ]
    return "\n".join(lines) + "\n"


def _ratios(rows: list[dict], n_test: int) -> list[dict]:
    def total(r):
        return r["fit_s"] + r["predict_ms_per_image"] * n_test / 1000

    by = {(r["method"], r["n_train"]): r for r in rows}
    sizes = sorted({r["n_train"] for r in rows})
    out = []
    for n in sizes:
        for ours, ref in [
            ("adlearn PaDiM", "naive PaDiM"),
            ("adlearn PaDiM", "anomalib Padim"),
            ("adlearn SPADE", "naive SPADE"),
        ]:
            if (ours, n) in by and (ref, n) in by:
                out.append(
                    {"what": f"{ref} ÷ {ours}, N={n}", "value": total(by[ref, n]) / total(by[ours, n])}
                )
    for method in VARIANTS:
        if (method, sizes[0]) in by and (method, sizes[-1]) in by and len(sizes) > 1:
            out.append(
                {
                    "what": f"{method}: peak RSS N={sizes[-1]} ÷ N={sizes[0]}",
                    "value": by[method, sizes[-1]]["peak_rss_mib"] / by[method, sizes[0]]["peak_rss_mib"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200], help="training-set sizes N")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--n-test-good", type=int, default=10)
    parser.add_argument("--n-test-defect", type=int, default=2, help="per defect kind")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--k", type=int, default=50, help="SPADE's K (the paper's 50)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--anomalib-python",
        default=os.environ.get("ANOMALIB_PYTHON"),
        help="python of a venv with anomalib installed (skipped when absent)",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "padim_spade"))
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker)

    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants if not v.startswith("anomalib") or args.anomalib_python]
    with tempfile.TemporaryDirectory(prefix="padim_spade_") as tmp:
        workdir = Path(tmp)
        shared = _shared_setup(args, workdir)
        rows = [r for n in args.sizes for v in variants if (r := _run(v, n, shared, args, workdir))]
    for row in rows:
        _accuracy(row, shared)
    by = {(r["method"], r["n_train"]): r for r in rows}
    agreement = [
        _agreement(by[ours, n], by[ref, n])
        for n in args.sizes
        for ours, ref in [
            ("adlearn PaDiM", "naive PaDiM"),
            ("adlearn PaDiM", "anomalib Padim"),
            ("adlearn SPADE", "naive SPADE"),
        ]
        if (ours, n) in by and (ref, n) in by
    ]
    n_test = len(shared["test"])
    arguments = argv if argv is not None else sys.argv[1:]
    meta = {
        "command": f"{COMMAND} " + " ".join(a if " " not in a else repr(a) for a in arguments),
        "category": args.category,
        "image_size": args.image_size,
        "n_test": n_test,
        "n_defective": int(shared["labels"].sum()),
        "backbone": args.backbone,
        "pretrained": shared["pretrained"],
        "d": len(shared["channel_idx"]),
        "k": args.k,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    ratios = _ratios(rows, n_test)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = [{k: v for k, v in r.items() if k not in ("scores", "maps")} for r in rows]
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": table, "ratios": ratios, "agreement": agreement}, indent=2)
    )
    out.with_suffix(".md").write_text(_markdown(rows, agreement, ratios, meta))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
