"""The `radd-fast` command line: info, train, sample, eval, demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from .model import PRECISIONS, autocast_dtype


def _train_options(p: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, with its default and type."""
    from .train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        t = hints[f.name]
        if f.name == "model_overrides":
            p.add_argument("--set", dest="model_overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a model preset field, e.g. --set n_blocks=2 (repeatable)")
        elif t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            base = next((a for a in typing.get_args(t) if a is not type(None)), t) if typing.get_args(t) else t
            p.add_argument(flag, type=base, default=default, metavar=f.name.upper())
    p.set_defaults(model="tiny")


def _parse_overrides(items: list[str]) -> dict:
    from .model import RADDConfig

    types = {f.name: f.type for f in dataclasses.fields(RADDConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"radd-fast: --set expects KEY=VALUE with KEY one of {', '.join(types)}, got {item!r}")
        cast = {"int": int, "float": float, "str": str}.get(str(types[key]), str)
        try:
            out[key] = cast(value)
        except ValueError:
            raise SystemExit(f"radd-fast: --set {key}: {value!r} is not a valid {types[key]}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radd-fast",
        description="Train, sample and evaluate masked discrete diffusion language models (RADD), fast.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("info", help="versions, build, kernels per device, visible GPU")

    t = sub.add_parser("train", help="train a model (torchrun --nproc-per-node N for several processes)")
    _train_options(t)

    s = sub.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("--ckpt", required=True, help="a model folder or a training checkpoint folder")
    s.add_argument("--steps", type=int, default=128, help="sampling steps n (default 128)")
    s.add_argument("--num-samples", type=int, default=2)
    s.add_argument("--batch-size", type=int, default=None,
                   help="sequences sampled at once (default: all); batch j uses seed + j")
    s.add_argument("--length", type=int, default=None, help="tokens per sample (default: the model's length)")
    s.add_argument("--prompt", default=None, help="text the samples start with (never re-masked)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--method", choices=("cached", "confidence", "reference"), default="cached",
                   help="cached: the device-side cache-aware sampler (default); confidence: reveal the most "
                        "confident positions first (MaskGIT/LLaDA); reference: the step-by-step oracle")
    s.add_argument("--greedy", action="store_true", help="argmax decoding of each revealed token")
    s.add_argument("--device", default="auto")
    s.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                   help="ema weights of a training checkpoint when present (auto), or the raw ones")
    s.add_argument("--tokenizer-path", default=None, help="folder of GPT-2's encoder.json and vocab.bpe")
    s.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network's autocast: auto = bf16 on CUDA, fp32 on the CPU")
    s.add_argument("--out", default=None, help="also write the samples as JSON lines (sample, text, tokens, nfe)")
    s.add_argument("--no-progress", dest="progress", action="store_false")

    e = sub.add_parser("eval", help="Monte Carlo likelihood bound (perplexity) of a checkpoint on benchmark text")
    e.add_argument("--ckpt", required=True, help="a model folder or a training checkpoint folder")
    e.add_argument("--data", required=True, help="lambada, wikitext2, wikitext103, ptb, lm1b, or a .txt/.jsonl path")
    e.add_argument("--loss", default="ao", help="ao (default: finite variance), lambda_dce, t_dce or dse")
    e.add_argument("--mc-samples", type=int, default=8, help="mask draws per chunk (K)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--length", type=int, default=None, help="chunk length (default: the model's length)")
    e.add_argument("--sampling", choices=("low_variance", "uniform"), default="low_variance")
    e.add_argument("--mode", choices=("bound", "exact_order"), default="bound",
                   help="exact_order: any-order AR likelihood in a random order (L calls per chunk)")
    e.add_argument("--max-chunks", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--weights", choices=("auto", "ema", "model"), default="auto")
    e.add_argument("--data-dir", default=None, help="folder holding the benchmark files (default ../shared/data)")
    e.add_argument("--tokenizer-path", default=None)
    e.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON to this file")
    e.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network's autocast: auto = bf16 on CUDA, fp32 on the CPU")
    e.add_argument("--no-progress", dest="progress", action="store_false")

    d = sub.add_parser("demo", help="the main job: train the tiny byte-level model on the CPU, sample, evaluate")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--minutes", type=float, default=3.0, help="training time budget (default 3)")
    d.add_argument("--steps", type=int, default=100_000, help="step limit (the time budget usually ends it)")
    d.add_argument("--batch-size", type=int, default=4, help="sequences of 512 bytes per step (default 4)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--set", dest="model_overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"radd-fast {args.command}: error: {e}", file=sys.stderr)
        code = 1
    if args.command == "train" and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        from .train import exit_process

        exit_process(code)  # gloo/NCCL threads may otherwise abort interpreter shutdown (see there)
    return code


def _run(args) -> int:
    if args.command == "info":
        from . import info

        return info.main()
    if args.command == "train":
        from .train import TrainConfig, train

        kw = {k: v for k, v in vars(args).items() if k != "command"}
        kw["model_overrides"] = _parse_overrides(kw["model_overrides"])
        res = train(TrainConfig(**kw))
        print(json.dumps({k: v for k, v in res.items() if k not in ("model", "ema")}))
        return 0
    if args.command == "sample":
        from .io import atomic_write
        from .sampling import sample_records

        records = sample_records(
            args.ckpt, steps=args.steps, num_samples=args.num_samples, length=args.length, prompt=args.prompt,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device,
            weights=args.weights, tokenizer_path=args.tokenizer_path, method=args.method, greedy=args.greedy,
            precision=args.precision, batch_size=args.batch_size, progress=args.progress)
        for r in records:
            print(f"--- sample {r['sample']} ({r['nfe']} network calls)\n{r['text']}")
        if args.out:
            with atomic_write(args.out, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        return 0
    if args.command == "eval":
        from .evaluate import evaluate
        from .io import atomic_write
        from .sampling import load_for_inference

        model = load_for_inference(args.ckpt, args.device, args.weights)
        amp = autocast_dtype(args.precision, model.output_weight.device, "eval")
        res = evaluate(model, args.data, mode=args.mode, loss=args.loss, mc_samples=args.mc_samples,
                       batch_size=args.batch_size, length=args.length, sampling=args.sampling, seed=args.seed,
                       max_chunks=args.max_chunks, data_dir=args.data_dir, tokenizer_path=args.tokenizer_path,
                       progress=args.progress, autocast_dtype=amp)
        lo, hi = res.perplexity_ci95
        print(f"{res.dataset}: {res.mode} {res.nll_per_token:.4f} ± {res.stderr:.4f} nats/token "
              f"(MC standard error), perplexity {res.perplexity:.2f} (95% CI {lo:.2f}-{hi:.2f}); "
              f"{res.chunks} chunks x {res.length} tokens, {res.mc_samples} draws each, "
              f"{res.tokens_per_second:,.0f} tokens/s")
        if args.json_out:
            with atomic_write(args.json_out, "w") as f:
                f.write(res.to_json() + "\n")
        print(res.to_json())
        return 0
    if args.command == "demo":
        from .demo import run_demo

        run_demo(out=args.out, minutes=args.minutes, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                 model_overrides=_parse_overrides(args.model_overrides), progress=args.progress)
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
