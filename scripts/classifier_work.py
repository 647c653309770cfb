"""Why the classifier's lead shrinks with load (issue 19.6): the forward-pass work one request costs each head.

Arithmetic on the committed measurement (serve/results/classifier_vs_generation.json) and the model's config,
no new run. Per request, the classifier runs its prompt through the model once and a 77-way score head on the
last position; constrained generation runs the same prompt, then one more position per output token after the
first, and the 49,152-way LM head once per output token. Counted: the linear layers and attention's two matmuls
(norms, activations and the structured-output mask are left out). With both FLOP counts and the measured
requests/s, the ratio of requests/s splits into (work per request) x (FLOP/s each path reached): the first is
fixed by the model and the prompt, only the second can move, and `flop_rate_ratio_3x_needs` says how far.

`.venv/bin/python scripts/classifier_work.py` (needs `offramp models pull smollm2-135m-instruct` for the config)
writes serve/results/classifier_work.json.
"""

from __future__ import annotations

from pathlib import Path

from offramp.paths import read_json, write_json
from offramp.store import resolve_model

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "serve" / "results" / "classifier_vs_generation.json"
OUT = ROOT / "serve" / "results" / "classifier_work.json"
MODEL = "smollm2-135m-instruct"
LABELS = 77
GOAL = 3.0  # issue 19's requests/s ratio


def body_flops_per_position(cfg: dict) -> float:
    """2 x the linear layers' weights of all decoder layers (q, k, v, o, gate, up, down)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    return 2.0 * per_layer * layers


def attention_flops(cfg: dict, position: int) -> float:
    """QK^T and attention x V for one query position attending to `position + 1` keys, all layers."""
    return 4.0 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"] * (position + 1)


def classifier_flops(cfg: dict, prompt_tokens: float) -> float:
    n = round(prompt_tokens)
    attention = sum(attention_flops(cfg, i) for i in range(n))
    return n * body_flops_per_position(cfg) + attention + 2.0 * cfg["hidden_size"] * LABELS


def generation_flops(cfg: dict, prompt_tokens: float, output_tokens: float) -> float:
    n, k = round(prompt_tokens), round(output_tokens)
    positions = n + k - 1  # the last output token is sampled, never fed back
    attention = sum(attention_flops(cfg, i) for i in range(positions))
    lm_head = 2.0 * cfg["hidden_size"] * cfg["vocab_size"] * k
    return positions * body_flops_per_position(cfg) + attention + lm_head


def main() -> None:
    measured = read_json(MEASURED)
    cfg = read_json(Path(resolve_model(MODEL)) / "config.json")  # one error line if not pulled
    prompt = measured["workload"]["prompt_tokens_mean"]
    cls_flops = classifier_flops(cfg, prompt)
    levels = []
    gen_points = measured["constrained_generation"]["points"]
    for gen, cls in zip(gen_points, measured["classifier"]["points"], strict=True):
        out_tokens = gen["output_tokens_per_s"] / gen["requests_per_s"]
        gen_flops = generation_flops(cfg, prompt, out_tokens)
        measured_ratio = cls["requests_per_s"] / gen["requests_per_s"]
        work_ratio = gen_flops / cls_flops
        levels.append({
            "concurrency": gen["concurrency"],
            "generation_output_tokens_per_request": round(out_tokens, 2),
            "generation_gflop_per_request": round(gen_flops / 1e9, 3),
            "measured_requests_per_s_ratio": round(measured_ratio, 3),
            "work_per_request_ratio": round(work_ratio, 3),
            "classifier_gflop_per_s": round(cls_flops * cls["requests_per_s"] / 1e9, 1),
            "generation_gflop_per_s": round(gen_flops * gen["requests_per_s"] / 1e9, 1),
            "flop_rate_ratio": round(measured_ratio / work_ratio, 3),
            "flop_rate_ratio_3x_needs": round(GOAL / work_ratio, 3),
        })  # fmt: skip
    write_json(OUT, {
        "what": "forward-pass work per request of each head on the measured Banking77 prompts, and the FLOP/s each "
                "path reached in that measurement: measured requests/s ratio = work_per_request_ratio x "
                "flop_rate_ratio",
        "source": f"arithmetic by scripts/classifier_work.py on {MEASURED.relative_to(ROOT)} (measured "
                  f"{measured['measured_at']}, {measured['hardware']['cpu']}, {measured['hardware']['cpu_cores']} "
                  f"cores) and {MODEL}'s config.json",
        "model": MODEL,
        "prompt_tokens_mean": prompt,
        "classifier_gflop_per_request": round(cls_flops / 1e9, 3),
        "counted": "linear layers, attention's QK^T and attention x V, the score / LM head; not norms, "
                   "activations, rotary embeddings or the structured-output mask",
        "levels": levels,
    })  # fmt: skip
    for lv in levels:
        print(f"c={lv['concurrency']}: measured {lv['measured_requests_per_s_ratio']}x = work "
              f"{lv['work_per_request_ratio']}x * FLOP/s {lv['flop_rate_ratio']}x (3x needs "
              f"{lv['flop_rate_ratio_3x_needs']}x; classifier {lv['classifier_gflop_per_s']} GFLOP/s, "
              f"generation {lv['generation_gflop_per_s']})")  # fmt: skip
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
