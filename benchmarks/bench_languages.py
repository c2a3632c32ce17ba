"""Languages: what a listener reads when the speaker does not speak English, or switches.

Built on ``bench_quality``'s machinery (sessions streamed in real time through `livetranslate up`,
every event timed, document-level chrF/BLEU, the same engines offline as the ceiling):

* **Spanish speech -> English.** A 46-sentence meeting in Spanish written for this benchmark
  (``benchmarks/corpus/spanish.json``, 509 words, English references written by hand), spoken by
  espeak-ng's ``es`` and ``es-419`` voices; clean and with white noise at 10 dB SNR. Live: `up`
  with ``sourceLanguage: es``, ``targetLanguages: [en]`` (the packaged multilingual ``base``
  unless ``--model``), N sessions at once. Offline: the same model on each utterance whole, cut
  into sentences, each through Apertium es->en; MT only: Apertium on the correct Spanish.
  Streaming WER is compared with that offline per-utterance WER (target <= 1.2x).
* **auto, a session that switches.** Utterances of the English meeting (``meeting.json``) and
  the Spanish one interleaved in runs of one to three, so some switches last one utterance;
  ``sourceLanguage: auto``, targets ``[en, es]``. Detection: each final belongs to the utterance
  its time span overlaps most; an utterance is right when every final in it carries the language
  it was spoken in. chrF of the session as the English listener reads it (Apertium for the
  Spanish sentences, the English ones passed through) against the English document, and the
  same for the Spanish listener.
* **Offline pairs.** Twenty sentences written in seven languages (``benchmarks/corpus/
  parallel.json``): every pair measured translates one language's sentences, one at a time,
  against another's. Document chrF and BLEU, the route the service took (``ok``: a direct pair;
  ``pivot:X``: two pairs through X) and seconds per sentence.

Nothing here fails on a figure; the targets are printed beside them.

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/bench_languages.py --sessions 2
    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/bench_languages.py --parts pairs --out /tmp/languages
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from livetranslate_testing.figures import loadavg, provenance, provenance_line
from livetranslate_testing.speech import to_pcm16

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import bench_quality as quality

ROOT = quality.ROOT
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SPANISH = CORPUS_DIR / "spanish.json"
PARALLEL = CORPUS_DIR / "parallel.json"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "languages"
# Direct pairs both ways, then the routes that need a pivot (`livetranslate languages`).
PAIRS = (
    ("en", "es"),
    ("es", "en"),
    ("en", "ca"),
    ("ca", "en"),
    ("en", "gl"),
    ("gl", "en"),
    ("es", "fr"),
    ("fr", "es"),
    ("es", "pt"),
    ("pt", "es"),
    ("es", "it"),
    ("it", "es"),
    ("es", "ca"),
    ("ca", "es"),
    ("es", "gl"),
    ("gl", "es"),
    ("en", "fr"),
    ("fr", "en"),
    ("en", "pt"),
    ("pt", "en"),
    ("en", "it"),
    ("it", "en"),
)
AUTO_RUNS = (2, 1, 3, 2, 1, 2, 3, 1, 2, 2, 1)  # utterances per language run, alternating en / es
TARGETS = {
    "spanish_chrf_gap": "Spanish speech -> English: live chrF within 3 points of the same engines offline",
    "detection": "language right on >= 90% of the utterances of a session that switches en <-> es",
    "wer_ratio": "streaming WER <= 1.2x the same model's offline per-utterance WER",
}


def spec_file(tmp: Path, source: str, targets: Sequence[str]) -> Path:
    path = tmp / f"pipeline-{source}.yaml"
    path.write_text(
        "apiVersion: livetranslate.io/v1alpha1\nkind: TranslationPipeline\n"
        f"metadata: {{name: bench-{source}}}\n"
        f"spec:\n  sourceLanguage: {source}\n  targetLanguages: [{', '.join(targets)}]\n"
    )
    return path


# ------------------------------------------------------------------------------- Spanish speech


def spanish_speech(sessions: int, model: str, limit: int | None, noise: bool, tmp: Path) -> dict[str, Any]:
    utterances = quality.load_corpus(SPANISH, limit)
    clean = quality.build_session(utterances)
    conditions = {"clean": clean, **({"noisy": quality.noisy(clean)} if noise else {})}
    print(
        f"spanish: {len(clean.sentences)} sentences, {clean.seconds:.0f} s; offline ceiling ({model})",
        flush=True,
    )
    ceiling = quality.ceilings(conditions, tmp, model, source="es", target="en")
    runs, examples = quality.live_runs(
        ["sentence"], conditions, sessions, tmp, spec_file(tmp, "es", ["en"]), source="es", target="en"
    )
    return {
        "corpus": {
            "path": str(SPANISH.relative_to(ROOT)),
            "sentences": len(clean.sentences),
            "utterances": len(utterances),
            "audio_seconds": round(clean.seconds, 2),
            "words": sum(len(quality.words(s.text)) for s in clean.sentences),
            "voices": sorted({u["voice"] for u in utterances}),
        },
        "ceilings": ceiling,
        "runs": runs,
        "examples": examples,
    }


# ------------------------------------------------------------------------- a switching session


def auto_utterances(limit: int | None) -> list[dict[str, Any]]:
    """English and Spanish utterances in alternating runs (``AUTO_RUNS``), each tagged with the
    language it is spoken in and carrying both texts: [spoken, English, Spanish]."""
    english = [
        {**u, "language": "en", "sentences": [[en, en, es] for en, es in u["sentences"]]}
        for u in quality.load_corpus(quality.CORPUS)
    ]
    spanish = [
        {**u, "language": "es", "sentences": [[es, en, es] for es, en in u["sentences"]]}
        for u in quality.load_corpus(SPANISH)
    ]
    out: list[dict[str, Any]] = []
    pools = [english, spanish]
    for k, run in enumerate(AUTO_RUNS):
        pool = pools[k % 2]
        out += [pool.pop(0) for _ in range(min(run, len(pool)))]
    return out[:limit] if limit else out


def utterance_of(final: dict[str, Any], spans: Sequence[tuple[float, float]]) -> int | None:
    """The utterance whose span the final's [start, end] overlaps most."""
    a, b = float(final["start"]), float(final["end"])
    best = max(range(len(spans)), key=lambda i: min(b, spans[i][1]) - max(a, spans[i][0]), default=None)
    if best is None or min(b, spans[best][1]) - max(a, spans[best][0]) <= 0:
        return None
    return best


def detection(logs: Sequence[Any], session: Any, languages: Sequence[str]) -> dict[str, Any]:
    """Utterances whose finals all carry the language they were spoken in, over all sessions."""
    utterances = session.utterances()
    spans = [(u[0].start, u[-1].end) for u in utterances]
    right = total = finals_right = finals_total = 0
    wrong: list[str] = []
    for log in logs:
        seen: dict[int, list[dict[str, Any]]] = {}
        for arrival in log.arrivals:
            ev = arrival.event
            if ev.get("type") == "transcript.final" and str(ev.get("text", "")).strip():
                k = utterance_of(ev, spans)
                if k is not None:
                    seen.setdefault(k, []).append(ev)
        for k in range(len(utterances)):
            finals = seen.get(k, [])
            total += 1
            finals_total += len(finals)
            good = [f for f in finals if f.get("language") == languages[k]]
            finals_right += len(good)
            if finals and len(good) == len(finals):
                right += 1
            elif len(wrong) < 8:
                wrong.append(
                    f"{languages[k]}: " + " | ".join(f"{f.get('language')}:{f['text']}" for f in finals)
                )
    return {
        "utterances": total,
        "right": right,
        "share": round(right / total, 4) if total else None,
        "finals": finals_total,
        "finals_right": finals_right,
        "wrong_examples": wrong,
    }


def switching_session(sessions: int, model: str, limit: int | None, tmp: Path) -> dict[str, Any]:
    utterances = auto_utterances(limit)
    languages = [u["language"] for u in utterances]
    built = quality.build_session(
        [{**u, "sentences": [[s[0], ""] for s in u["sentences"]]} for u in utterances]
    )
    # The same sentences with the English, or the Spanish, document as the reference.
    per_target = {
        target: [
            dataclasses.replace(s, reference=utterances[s.utterance]["sentences"][j][col])
            for s, j in zip(built.sentences, _sentence_indexes(utterances), strict=True)
        ]
        for target, col in (("en", 1), ("es", 2))
    }
    print(f"auto: {len(utterances)} utterances ({Counter(languages)}), {built.seconds:.0f} s", flush=True)
    pcm = to_pcm16(built.samples)
    with quality.up_running(tmp / "up-auto.log", spec_file(tmp, "auto", ["en", "es"])) as (url, _metrics):
        load = loadavg()
        logs = asyncio.run(quality.run_sessions(url, pcm, sessions, "auto", ["en", "es"]))
    rows = {}
    for target, spoken in per_target.items():
        figs = [quality.session_figures(log, spoken, target) for log in logs]
        rows[target] = {
            k: v
            for k, v in quality.aggregate(figs, spoken).items()
            if k
            in (
                "wer",
                "chrf",
                "bleu",
                "translations_per_sentence",
                "sentence_latency_s",
                "first_translation_latency_s",
                "caption_latency_s",
                "quality",
                "errors",
            )
        }
    # The MT-only ceiling of the same document: each sentence through Apertium from the language
    # it was spoken in (what a perfect transcript and perfect detection would give).
    return {
        "utterances": len(utterances),
        "languages": dict(Counter(languages)),
        "runs": list(AUTO_RUNS),
        "audio_seconds": round(built.seconds, 2),
        "sessions": sessions,
        "model": model,
        "loadavg_at_start": load,
        "detection": detection(logs, built, languages),
        "targets": rows,
        "ceiling": auto_ceiling(utterances, tmp),
    }


def _sentence_indexes(utterances: Sequence[dict[str, Any]]) -> list[int]:
    return [j for u in utterances for j in range(len(u["sentences"]))]


def auto_ceiling(utterances: Sequence[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    from livetranslate.procs import stop

    proc, base = quality._sibling("bench_translate").serve_translate(
        {"LT_TRANSLATE_BACKEND": "apertium"}, tmp, "languages-auto"
    )
    out: dict[str, Any] = {}
    try:
        for target, col in (("en", 1), ("es", 2)):
            hyps: list[str] = []
            for u in utterances:
                texts = [s[0] for s in u["sentences"]]
                hyps += (
                    texts
                    if u["language"] == target
                    else quality.translate_all(base, texts, target, u["language"])
                )
            out[target] = quality.doc_scores(hyps, [s[col] for u in utterances for s in u["sentences"]])
    finally:
        stop(proc)
    return out


# -------------------------------------------------------------------------------- offline pairs


def pairs(tmp: Path, limit: int | None) -> list[dict[str, Any]]:
    from livetranslate.procs import stop

    sentences = json.loads(PARALLEL.read_text(encoding="utf-8"))["sentences"][:limit]
    proc, base = quality._sibling("bench_translate").serve_translate(
        {"LT_TRANSLATE_BACKEND": "apertium"}, tmp, "languages-pairs"
    )
    rows: list[dict[str, Any]] = []
    try:
        for source, target in PAIRS:
            quality.translate_events(
                base, [sentences[0][source]], target, source
            )  # starts the route's pipeline
            events = quality.translate_events(base, [s[source] for s in sentences], target, source)
            routes = Counter(str(ev.get("quality") or "none") for ev in events)
            row = {
                "source": source,
                "target": target,
                "route": routes.most_common(1)[0][0],
                "routes": dict(routes),
                **quality.doc_scores(
                    [str(ev.get("text", "")) for ev in events], [s[target] for s in sentences]
                ),
                "seconds_per_sentence": round(sum(ev["seconds"] for ev in events) / len(events), 4),
                "example": events[1].get("text") if len(events) > 1 else None,
            }
            print(json.dumps(row, ensure_ascii=False), flush=True)
            rows.append(row)
    finally:
        stop(proc)
    return rows


# -------------------------------------------------------------------------------------- report


def _measured(part: dict[str, Any]) -> str:
    m = part["measured"]
    return f"{provenance_line(m)}: `{m['command']}`."


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Languages: Spanish speech, a session that switches, and the offline pairs",
        "",
        (
            f"Whisper `{result['model']}` int8 on CPU, Apertium. Each part records when and at which "
            "commit it was measured (`--parts` re-measures some and keeps the others)."
        ),
        "",
    ]
    if result.get("subset"):
        lines += ["**Smoke run on a subset: not the recorded figures.**", ""]
    if sp := result.get("spanish"):
        c = sp["corpus"]
        lines += [
            "## Spanish speech -> English",
            "",
            _measured(sp),
            "",
            (
                f"{c['sentences']} sentences in {c['utterances']} utterances, {c['words']} words, "
                f"{c['audio_seconds']} s, voices {', '.join(c['voices'])}; noisy = white noise at "
                f"{quality.SNR_DB:g} dB SNR. Live: `up` with sourceLanguage es, targets [en], "
                f"{sp['runs'][0]['sessions'] if sp['runs'] else '-'} real-time sessions at once."
            ),
            "",
            (
                "| audio | WER live (offline) | WER ratio | chrF live (offline) | BLEU live (offline) "
                "| sentence -> translation p50 / p95 | caption p50 / p95 | translations / sentence |"
            ),
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sp["runs"]:
            c = sp["ceilings"].get(r["condition"], {})
            w, cw = r["wer"]["mean"], c.get("wer")
            ratio = w / cw if w is not None and cw else None
            chrf = r["chrf"]["mean"]
            gap = c["chrf"] - chrf if chrf is not None and c.get("chrf") is not None else None
            s, cap = r["sentence_latency_s"], r["caption_latency_s"]
            lines.append(
                f"| {r['condition']} | {quality._num(w, 3)} ({quality._num(cw, 3)}) | {quality._num(ratio)}"
                f"{quality._mark(None if ratio is None else ratio <= 1.2)} "
                f"| {quality._num(chrf, 1)} ({quality._num(c.get('chrf'), 1)}){quality._mark(None if gap is None else gap <= 3)} "
                f"| {quality._num(r['bleu']['mean'], 1)} ({quality._num(c.get('bleu'), 1)}) | {quality._num(s['p50'])} / {quality._num(s['p95'])} s "
                f"| {quality._num(cap['p50'])} / {quality._num(cap['p95'])} s | {quality._num(r['translations_per_sentence'])} |"
            )
        mt = sp["ceilings"].get("mt_only", {})
        lines += [
            "",
            (
                f"Apertium es->en on the correct Spanish (MT only): chrF {quality._num(mt.get('chrf'), 1)}, "
                f"BLEU {quality._num(mt.get('bleu'), 1)}."
            ),
            "",
        ]
    if au := result.get("auto"):
        d = au["detection"]
        lines += [
            "## sourceLanguage auto, a session that switches en <-> es",
            "",
            _measured(au),
            "",
            (
                f"{au['utterances']} utterances ({', '.join(f'{k} {v}' for k, v in au['languages'].items())}) in "
                f"runs of {', '.join(map(str, au['runs']))}, {au['audio_seconds']} s, {au['sessions']} sessions. "
                f"Language right on {d['right']} of {d['utterances']} utterances ({quality._num(100 * (d['share'] or 0), 1)}%)"
                f"{quality._mark(None if d['share'] is None else d['share'] >= 0.9)}; "
                f"{d['finals_right']} of {d['finals']} finals."
            ),
            "",
            "| listener | WER of the finals | chrF (MT-only ceiling) | BLEU (ceiling) | sentence -> translation p50 / p95 | routes |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for target, r in au["targets"].items():
            c = au["ceiling"].get(target, {})
            s = r["sentence_latency_s"]
            lines.append(
                f"| {target} | {quality._num(r['wer']['mean'], 3)} | {quality._num(r['chrf']['mean'], 1)} ({quality._num(c.get('chrf'), 1)}) "
                f"| {quality._num(r['bleu']['mean'], 1)} ({quality._num(c.get('bleu'), 1)}) | {quality._num(s['p50'])} / {quality._num(s['p95'])} s "
                f"| {', '.join(f'{k} {v}' for k, v in r['quality'].items())} |"
            )
        if d["wrong_examples"]:
            lines += ["", "Utterances detected wrong (spoken: detected:final):", ""]
            lines += [f"- `{w[:160]}`" for w in d["wrong_examples"]]
        lines.append("")
    if pa := result.get("pairs"):
        rows = pa["rows"]
        lines += [
            "## Offline pairs on text",
            "",
            _measured(pa),
            "",
            (
                f"{pa['sentences']} sentences per language, each translated alone by `livetranslate "
                "serve translate` (Apertium); document chrF / BLEU against the hand-written target."
            ),
            "",
            "| pair | route | chrF | BLEU | s / sentence |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            route = "direct" if r["route"] == "ok" else r["route"]
            lines.append(
                f"| {r['source']} -> {r['target']} | {route} | {quality._num(r['chrf'], 1)} | {quality._num(r['bleu'], 1)} "
                f"| {quality._num(r['seconds_per_sentence'], 3)} |"
            )
        lines.append("")
    lines += ["Targets (ok / MISS beside each figure): " + "; ".join(TARGETS.values()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="spanish,auto,pairs", help="comma-separated: spanish, auto, pairs")
    parser.add_argument("--sessions", type=int, default=2, help="concurrent identical real-time sessions")
    parser.add_argument(
        "--model", default="base", help="multilingual Whisper model (packaged name or a path)"
    )
    parser.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="smoke run: the first K sentences (pairs) / utterances (auto) / sentences (spanish)",
    )
    parser.add_argument("--clean-only", action="store_true", help="Spanish speech without the noisy run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results stem: STEM.json and STEM.md")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= {"spanish", "auto", "pairs"} or args.sessions < 1:
        parser.error("--parts is a list of spanish, auto, pairs and --sessions >= 1")
    os.environ["LT_AUDIO_MODEL"] = args.model  # `up` hands its environment to the audio service
    command = "python -P " + shlex.join(
        ["benchmarks/bench_languages.py", *(argv if argv is not None else sys.argv[1:])]
    )
    json_path = Path(f"{args.out}.json")
    result: dict[str, Any] = {
        **provenance("languages", command),
        "subset": args.sentences is not None,
        "model": args.model,
        "targets": TARGETS,
    }
    if json_path.exists() and not result["subset"]:  # the parts not re-measured stay as they were
        before = json.loads(json_path.read_text(encoding="utf-8"))
        if not before.get("subset") and before.get("model") == args.model:
            result.update(
                {p: before[p] for p in ("pairs", "spanish", "auto") if p in before and p not in parts}
            )

    def stamp(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A part's figures with when, where and at which commit they were measured (the file's
        own provenance block is the run's, and a part can be kept from an earlier run)."""
        measured = {k: v for k, v in provenance("languages", command).items() if k != "benchmark"}
        return {**run(), "measured": measured}

    with tempfile.TemporaryDirectory(prefix="bench-languages-") as name:
        tmp = Path(name)
        if "pairs" in parts:
            sentences = len(json.loads(PARALLEL.read_text(encoding="utf-8"))["sentences"][: args.sentences])
            result["pairs"] = stamp(lambda: {"sentences": sentences, "rows": pairs(tmp, args.sentences)})
        if "spanish" in parts:
            result["spanish"] = stamp(
                lambda: spanish_speech(args.sessions, args.model, args.sentences, not args.clean_only, tmp)
            )
        if "auto" in parts:
            result["auto"] = stamp(lambda: switching_session(args.sessions, args.model, args.sentences, tmp))
    result["loadavg_after"] = loadavg()
    quality.write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
