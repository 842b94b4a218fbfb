"""The short human summary `tools/benchmark.py` prints from its result dict.

Apart from the runner because it is pure formatting of the JSON the run writes:
a recorded `--out` file can be re-printed or compared without re-running.
"""

from __future__ import annotations

from typing import Any, Optional


def _fmt(x: Optional[float], unit: str = "") -> str:
  if x is None:
    return "-"
  for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.2f}{suffix}{unit}"
  return f"{x:.3g}{unit}"


def table(result: dict[str, Any]) -> str:
  """The short human summary of a result dict."""
  lines = []
  m = result.get("machine", {})
  lines.append(f"machine: {m.get('device_kind')} x{m.get('num_devices')}, "
               f"{m.get('cpu_count')} cpus, load {m.get('load_average')}")
  if "peak" in result:
    p = result["peak"]
    lines.append(f"peak matmul ({p['dtype']}, n={p['n']}): "
                 f"{_fmt(p['flops_per_s'], 'FLOP/s')}")
  if "train" in result:
    t = result["train"]
    lines.append(
        f"train {t['preset']} {t['dtype']} B={t['batch_size']} "
        f"enc={t['encoder_length']} dec={t['decoder_length']}: "
        f"step {t['step']['median_s']:.3f}s, {t['examples_per_s']:.2f} ex/s, "
        f"{_fmt(t['tokens_per_s'])} tok/s, MFU {100 * t['mfu']:.1f}%, "
        f"compile {t['compile_s']:.1f}s, XLA/analytic FLOPs "
        f"{t['xla_over_model_flops'] or 0:.3f}")
    for name, part in (t.get("breakdown") or {}).items():
      lines.append(f"  {name:<18} {part['median_s']:.3f}s "
                   f"({100 * part['fraction_of_step']:.0f}% of step)")
    if "pytorch" in t:
      p = t["pytorch"]
      lines.append(
          f"  train step: ofa_jax {t['step']['median_s']:.3f} s ({t['dtype']}), "
          f"PyTorch OFA {p['median_s']:.3f} s (float32, torch {p['torch_version']}, "
          f"{_threads(p['threads'])}): {t['speedup_vs_pytorch']:.2f}x")
    if "profile" in t:
      lines.append("  profile (CPU time by XLA op kind): " + ", ".join(
          f"{r['name']} {100 * r['share']:.0f}%"
          for r in t["profile"]["by_category"][:8]))
  if "decode" in result:
    lines.append("decode: preset kind length method cached  tokens/s "
                 "(without encoder)  (compile s)")
    for r in result["decode"]["rows"]:
      lines.append(f"  {r['preset']:<6} {r['kind']:<11} {r['length']:>5} "
                   f"{r['method']:<6} {str(r['cached']):<5} "
                   f"{r['tokens_per_s']:>9.1f} ({r['loop_tokens_per_s']:.1f})"
                   f"  ({r['compile_s']:.1f})")
    for s in result["decode"]["speedups"]:
      lines.append(f"  cache speed-up {s['kind']} {s['length']} {s['method']}: "
                   f"{s['cached_over_uncached']:.1f}x "
                   f"(without encoder {s['loop_cached_over_uncached']:.1f}x)")
    lines += _pytorch_decode_lines(result["decode"])
  if "input" in result:
    i = result["input"]
    for p in i["pipelines"]:
      lines.append(f"input {p['name']}: {p['examples_per_s']:.1f} ex/s "
                   f"(median batch), {i['pipeline_over_train_step'][p['name']]:.1f}x "
                   "the demo train step")
    lines.append(f"demo train step: "
                 f"{i['demo_train_step']['examples_per_s']:.1f} ex/s")
  if "memory" in result:
    for r in result["memory"]:
      if "error" in r:
        lines.append(f"memory {r['preset']} {r['layout']}: ERROR {r['error'][:200]}")
        continue
      act = r.get("activation_bytes_per_device")
      lines.append(
          f"memory {r['preset']:<6} {r['layout']:<9} mesh {r['mesh']}: params "
          f"{_fmt(r['params_bytes_per_device'], 'B')}, opt "
          f"{_fmt(r['opt_state_bytes_per_device'], 'B')}, act "
          f"{_fmt(act, 'B')}, (params+opt)/(total/N) "
          f"{r['params_opt_over_ideal']:.3f}")
  if "vq" in result:
    lines += _vq_table(result["vq"])
  return "\n".join(lines)


def _threads(n: int) -> str:
  return f"{n} thread" + ("" if n == 1 else "s")


def _pytorch_decode_lines(decode: dict[str, Any]) -> list[str]:
  """One line per caption length compared with PyTorch OFA's beam search."""
  lines = []
  for p in decode.get("pytorch", []):
    rows = {r["cached"]: r for r in decode["rows"] if r["kind"] == "text" and
            r["method"] == "beam" and r["length"] == p["max_length"]}
    ours = rows.get(True) or rows.get(False)
    line = (f"  beam-{p['beam_size']} {p['max_length']} tokens "
            f"B={p['batch_size']}: ofa_jax {ours['median_s']:.3f} s "
            f"({'cached' if ours['cached'] else 'uncached'}), PyTorch OFA "
            f"{p['median_s']:.3f} s (torch {p['torch_version']}, "
            f"{_threads(p['threads'])}): {ours['speedup_vs_pytorch']:.2f}x")
    if ours["cached"] and False in rows:
      line += f" (uncached {rows[False]['speedup_vs_pytorch']:.2f}x)"
    lines.append(line)
  return lines


def _vq_table(vq: dict[str, Any]) -> list[str]:
  lines = []
  for r in vq["tokenizer"]:
    for part in ("encode", "decode"):
      t = r[part]
      peak = t.get("fraction_of_peak")
      lines.append(
          f"vq {part} {r['preset']:<8} {r['image_size']}px B={r['batch_size']}: "
          f"{t['images_per_s']:.2f} img/s, {_fmt(t['flops_per_image'], 'FLOP')}"
          f"/img, {_fmt(t['flops_per_s'], 'FLOP/s')}"
          + (f" ({100 * peak:.0f}% of peak)" if peak is not None else "")
          + f", compile {t['compile_s']:.1f}s")
  for r in vq["generation"]:
    lines.append(
        f"vq generate {r['preset']:<6} {r['codes']} codes B={r['batch_size']} "
        f"{r['method']}: {r['codes_per_s']:.1f} codes/s "
        f"(without encoder {r['loop_codes_per_s']:.1f}), "
        f"{r['ms_per_step']:.1f} ms/step, {r['seconds_per_image']:.2f} s/image, "
        f"{_fmt(r['model_flops_per_image'], 'FLOP')}/img, "
        f"{_fmt(r['flops_per_s'], 'FLOP/s')}, "
        f"compile {r['compile_s']:.1f}s")
  for s in vq["text_to_image"]:
    lines.append(
        f"vq text-to-image {s['generator']} B={s['batch_size']} + "
        f"{s['tokenizer']}: generate {s['generate_s_per_image']:.2f} s/img, "
        f"VQGAN decode {s['vqgan_decode_s_per_image']:.2f} s/img "
        f"({100 * s['generation_share']:.0f}% generation)")
  if not lines:
    lines.append("vq: nothing measured")
  return lines
