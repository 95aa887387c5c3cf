"""The evaluation report: report.md, a self-contained report.html (base64 audio players, metric table, plots)
and metrics.png (every metric against epoch next to the training loss curve)."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from voicepipe.evaluate.runner import EvalContext, EvalResult, Row

from voicepipe.evaluate import selection as selection_module

NO_MOS = "no MOS predictor available offline"


def speaker_model_lines(result: EvalResult, ctx: EvalContext) -> list[str]:
    """What produced SIM, whether it compares with published numbers, and how the promotion margin was set."""
    sm = result.speaker_model or ctx.speaker_model
    if not sm:
        return ["- SIM model: not recorded"]
    lines = [f"- SIM model: {sm['description']} — `{sm['backend']}`: `{sm['model']}` ({sm.get('dim')}-d, "
             "fp32 L2-normalised embeddings, cosine)"]
    if sm.get("fallback"):
        lines.append(f"- **FALLBACK speaker model**: {sm['fallback']}")
    lines.append(f"- comparable to published SIM (Seed-TTS-eval: WavLM-large + ECAPA-TDNN)? {sm['comparable']}")
    if ctx.speaker_model_warning:
        lines.append(f"- **warning**: {ctx.speaker_model_warning}")
    rs = ctx.real_sim
    if rs:
        lines.append(f"- calibration: the target's own held-out recordings score SIM {rs['mean']:.3f} ± {rs['sd']:.3f} "
                     f"(min {rs['min']:.3f}, leave-one-out over {int(rs['n'])} clips) with this model: a checkpoint "
                     "at that level sounds as much like the speaker as the speaker's other recordings")
    sel, rule = result.selection, ctx.config.rule(sm)
    applied = "not applied (no base measured)" if sel.sim_margin is None else f"{sel.sim_margin:.3f}"
    detail = f" = {sel.margin_detail}" if sel.margin_detail else ""
    lines.append(f"- promotion margin over the base: {applied}{detail}; floor {rule.sim_margin:.3f}: "
                 f"{rule.margin_basis}")
    return lines

def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def table_rows(result: EvalResult) -> list[dict[str, str]]:
    """The metric table as display strings, one dict per evaluated model (also the Prefect table artifact)."""
    out = []
    for r in result.rows:
        mark = " ★" if r.name == result.selection.chosen else ""
        status = r.status if r.status == "ok" else f"failed: {r.error}"
        if r.status == "ok" and r.n_valid < r.n_samples:
            top = sorted(r.invalid_reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
            status = "invalid: " + "; ".join(f"{k} ×{n}" for k, n in top)
        d = {
            "checkpoint": r.name + mark, "epoch": _fmt(r.epoch), "val loss": _fmt(r.val_loss, 4),
            "valid": f"{r.n_valid}/{r.n_samples}", "SIM": _fmt(r.sim),
            "ΔSIM vs base": "–" if r.sim_vs_base is None else f"{r.sim_vs_base:+.3f}",
            "ΔSIM vs reference": "–" if r.sim_vs_reference is None else f"{r.sim_vs_reference:+.3f}",
            "WER": _fmt(r.wer), "CER": _fmt(r.cer), "MOS OVRL": _fmt(r.mos_ovrl, 2), "MOS P.808": _fmt(r.mos_p808, 2),
            "RTF": _fmt(r.rtf, 2), "status": status,
        }
        out.append(d)
    return out


def _rule_text() -> str:
    doc = selection_module.__doc__ or ""
    return doc.split("\n", 2)[2].strip() if doc.count("\n") >= 2 else doc


def _epoch_series(rows: list[Row], attr: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r.role == "checkpoint" and r.epoch is not None and r.status == "ok":
            v = r.valid_fraction if attr == "valid_fraction" else getattr(r, attr)
            if v is not None and math.isfinite(v):
                xs.append(r.epoch)
                ys.append(v)
    return xs, ys


def plot_metrics(result: EvalResult, training: dict[str, Any], path: Path) -> Path:
    """One figure: the loss curve from training.json, then each metric against epoch, with the base model's and
    the reference's values as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voicepipe.evaluate.runner import epoch_losses

    panels = [("sim", "speaker similarity (↑)"), ("wer", "WER (↓)"), ("cer", "CER (↓)"),
              ("mos_ovrl", "DNSMOS OVRL (↑)"), ("rtf", "RTF (↓)"), ("valid_fraction", "valid samples (↑)"),
              ("val_loss", "val loss (from training.json)")]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for a in axes.flat:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax = axes[0][0]
    losses = epoch_losses(training)
    for key in ("train_loss", "loss", "val_loss"):
        pts = sorted((ep, m[key]) for ep, m in losses.items() if key in m)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    ax.set_title("training loss")
    ax.set_xlabel("epoch")
    if losses:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no per-epoch losses in training.json", ha="center", va="center", transform=ax.transAxes)
    best = result.selection.chosen
    for ax, (attr, title) in zip(axes.flat[1:], panels, strict=False):
        xs, ys = _epoch_series(result.rows, attr)
        ax.plot(xs, ys, marker="o", color="C0")
        for r in result.rows:
            if r.name == best and r.epoch is not None and attr != "valid_fraction":
                v = getattr(r, attr)
                if v is not None:
                    ax.plot([r.epoch], [v], marker="*", markersize=16, color="gold", markeredgecolor="k")
        for r, style in ((next((r for r in result.rows if r.role == "base"), None), "--"),
                         (next((r for r in result.rows if r.role == "reference"), None), ":")):
            if r is None or r.status != "ok":
                continue
            v = r.valid_fraction if attr == "valid_fraction" else getattr(r, attr, None)
            if v is not None and math.isfinite(v):
                ax.axhline(v, linestyle=style, color="gray", label=r.name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if not xs:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"checkpoint evaluation: {result.speaker}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _md_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no rows)\n"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h].replace("|", "/") for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(result: EvalResult, ctx: EvalContext, plot_name: str = "metrics.png") -> str:
    sel = result.selection
    lines = [f"# Checkpoint evaluation: {result.speaker}", ""]
    verdict = "promoted" if sel.promotable else "NOT promoted"
    lines += [f"**Selected:** {sel.chosen or 'none'} — {verdict}. {sel.reason}.", ""]
    if result.promoted:
        lines += [f"Voice registry: `voices/{result.speaker}` → `{result.promoted['sha']}`", ""]
    lines += [
        f"- checkpoints: `{ctx.checkpoints_dir}`; corpus: `{ctx.corpus_dir}`",
        f"- texts: {sum(k == 'script' for k, _ in ctx.texts)} fixed script sentences + "
        f"{sum(k == 'val' for k, _ in ctx.texts)} held-out validation texts",
        f"- speaker similarity (SIM): cosine to the fp32 centroid of {len(ctx.held_out)} held-out real clips; "
        "the base model's zero-shot clone (a real training clip as reference) is the floor to beat",
        *speaker_model_lines(result, ctx),
        f"- intelligibility: ASR `{result.asr_name}`, WER/CER with jiwer after lower-casing and stripping "
        "punctuation" + (" (PocketSphinx is far weaker than Whisper: compare WERs only within this report)"
                         if "pocketsphinx" in result.asr_name else ""),
        "- naturalness: " + ("DNSMOS P.835 OVRL and P.808 (speechmos, ONNX weights in its wheel; a speech-quality "
                             "predictor, not a TTS-naturalness model)" if result.mos_name else NO_MOS),
        f"- synthesis: checkpoints through the serving engine (all texts batched, the checkpoint's "
        f"generation_config.json sampling, prompt language {_langs(result)}) on `{ctx.config.device}`; the base "
        "model's clone through the package's generate_voice_clone",
        "- speed: RTF = the generator's wall time for all texts / their audio seconds (engine: batched)",
        "- SIM and MOS average the VALID samples only (none valid: –); WER/CER count every sample",
        "",
        "## Metrics", "", _md_table(table_rows(result)),
        "★ = selected. ΔSIM vs base > 0 means the fine-tune sounds more like the target than zero-shot cloning; "
        "promotion needs it above the promotion margin.", "",
        f"![metrics vs epoch]({plot_name})", "",
        "## Selection rule", "", *(["**PLUMBING RULE (tests/demos only): validity, WER and SIM were not checked.**",
                                    ""] if sel.rule == "plumbing" else []), _rule_text(), "",
        f"WER ceiling applied: {_fmt(sel.wer_ceiling)}; ranking of qualified checkpoints: "
        f"{', '.join(sel.ranking) or 'none'}", "",
    ]
    if sel.excluded:
        lines += ["Not candidates:", ""] + [f"- {k}: {v}" for k, v in sel.excluded.items()] + [""]
    lines += ["## Samples", ""]
    for r in result.rows:
        if not r.samples:
            continue
        lines += [f"### {r.name}", "", "| # | text | ASR | valid | SIM |", "|---|---|---|---|---|"]
        for i, s in enumerate(r.samples):
            ok = "yes" if s.valid else "no: " + "; ".join(s.reasons)
            lines.append(f"| [{i}]({s.wav}) | {s.text.replace('|', '/')} | {s.hypothesis.replace('|', '/')} | "
                         f"{ok.replace('|', '/')} | {_fmt(s.sim)} |")
        lines.append("")
    return "\n".join(lines)


def _wav_b64(path: Path, max_s: float = 20.0) -> str:
    """A 16 kHz 16-bit wav of the sample as base64 (kept small so the page stays self-contained)."""
    import librosa
    import soundfile as sf

    wav, sr = sf.read(str(path), dtype="float32", always_2d=False)
    wav = librosa.resample(np.asarray(wav), orig_sr=sr, target_sr=16000)[: int(max_s * 16000)]
    buf = io.BytesIO()
    sf.write(buf, wav, 16000, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(result: EvalResult, ctx: EvalContext, md: str, plot_png: Path) -> str:
    e = html.escape
    rows = table_rows(result)
    head = list(rows[0]) if rows else []
    table = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
    for r in rows:
        table += "<tr>" + "".join(f"<td>{e(r[h])}</td>" for h in head) + "</tr>"
    table += "</table>"
    png = base64.b64encode(plot_png.read_bytes()).decode("ascii") if plot_png.is_file() else ""
    sel = result.selection
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>voicepipe evaluation: {e(result.speaker)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}th{background:#eee}"
        ".bad{color:#a00}.card{border:1px solid #ddd;padding:.5em 1em;margin:1em 0}audio{height:28px}</style>",
        "</head><body>",
        f"<h1>Checkpoint evaluation: {e(result.speaker)}</h1>",
        f"<p><b>Selected:</b> {e(sel.chosen or 'none')} — {'promoted' if sel.promotable else 'NOT promoted'}. "
        f"{e(sel.reason)}.</p>",
        f"<p>SIM model: <code>{e((result.speaker_model or {}).get('key', 'not recorded'))}</code>"
        + ("" if not (result.speaker_model or {}).get("fallback") else
           f" <span class='bad'>FALLBACK: {e(result.speaker_model['fallback'])}</span>") + ". "
        f"ASR: <code>{e(result.asr_name)}</code>. Naturalness: "
        f"{e('DNSMOS P.835/P.808 (speechmos)' if result.mos_name else NO_MOS)}.</p>",
        "<h2>Metrics</h2>", table,
        f"<h2>Metrics vs epoch</h2><img alt='metrics vs epoch' style='max-width:100%' "
        f"src='data:image/png;base64,{png}'>",
        f"<h2>Selection rule</h2><pre>{e(_rule_text())}</pre>",
    ]
    if sel.excluded:
        parts.append("<ul>" + "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in sel.excluded.items()) + "</ul>")
    parts.append("<h2>Listen</h2>")
    n = ctx.config.html_samples
    for r in result.rows:
        parts.append(f"<div class='card'><h3>{e(r.name)}</h3>")
        if r.status != "ok":
            parts.append(f"<p class='bad'>failed: {e(str(r.error))}</p></div>")
            continue
        picks = sorted({round(i) for i in np.linspace(0, len(r.samples) - 1, n)}) if n and r.samples else []
        for s in (r.samples[i] for i in picks):  # spread over short/long script sentences and validation texts
            src = ctx.out_dir / s.wav if s.wav else None
            audio = (f"<audio controls src='data:audio/wav;base64,{_wav_b64(src)}'></audio>"
                     if src is not None and src.is_file() else "")
            flag = "" if s.valid else f" <span class='bad'>invalid: {e('; '.join(s.reasons))}</span>"
            parts.append(f"<p>{audio}<br><i>{e(s.text)}</i><br>ASR: {e(s.hypothesis) or '∅'} · "
                         f"SIM {_fmt(s.sim)}{flag}</p>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(result: EvalResult, ctx: EvalContext) -> EvalResult:
    """Write metrics.png, report.md and report.html into the output dir and record their paths on `result`."""
    out = ctx.out_dir
    result.plot_png = plot_metrics(result, ctx.training, out / "metrics.png")
    md = render_markdown(result, ctx, result.plot_png.name)
    result.report_md = out / "report.md"
    result.report_md.write_text(md, encoding="utf-8")
    result.report_html = out / "report.html"
    result.report_html.write_text(render_html(result, ctx, md, result.plot_png), encoding="utf-8")
    return result


def _langs(result: Any) -> str:
    langs = sorted({r.language for r in result.rows if r.role != "base" and r.language})
    return ", ".join(f"`{x}`" for x in langs) or "–"
