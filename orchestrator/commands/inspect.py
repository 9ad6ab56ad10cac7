"""`orchestrator inspect INPUT`: what the tool finds in a video and what it would do,
in plain words or as JSON. One pass over the frames (shot detection is cheap); nothing is
restored."""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path

import cv2

from services.stagekit.bands import EDGES

from .. import media
from ..media.references import Scan
from ..pipeline import memory
from ..pipeline.plan import make_plan
from ..pipeline.analysis import analyse, colour_source, shot_bands
from ..pipeline.sizing import MAX_HEIGHT
from ..pipeline.specs import StageSpec

VHS_SAMPLE = 16  # frames the VHS measures look at


def inspect(path: Path, specs: list[StageSpec], native: str = "auto", scale: str = "auto",
            max_height: int = MAX_HEIGHT, crops: Path | None = None) -> dict:
    """What the tool finds in ``path`` and would do; ``crops``: a folder to write a PNG
    crop of each overlay into (the report lists its path)."""
    source = media.probe(path)
    plan = make_plan(source, specs, native, scale, max_height, refuse=False)
    found = analyse(plan)   # the same pass a job makes: its shots are the job's clips
    shots, grey = _spans(found)
    return {
        "file": str(path),
        "container": _container(path),
        "video": {
            "codec": _video_codec(path), "width": source.width, "height": source.height,
            "pixel_format": source.pix_fmt, "frame_rate": _rate(source.fps),
            "variable_frame_rate": source.variable_rate, "frames": source.frame_count,
            "duration_s": round(source.duration, 3), "interlaced": source.interlaced,
            "field_order": source.field_order, "rotation": source.rotation,
            "sample_aspect_ratio": _ratio(source.sar), "display_aspect_ratio": _ratio(source.dar),
        },
        "native_resolution": {"width": plan.working_size[0], "height": plan.working_size[1]},
        "shots": {"count": len(shots), "starts_s": [round(s, 3) for s, _ in shots]},
        "black_and_white": [{"from_s": round(a, 3), "to_s": round(b, 3)} for a, b in grey],
        "grey_scenes": _grey_scenes(found, plan),
        "damaged_bands": _bands(found, plan),
        "overlays": _overlays(found, source, crops),
        "vhs": _vhs(source),
        "audio": _audio(path),
        "pipeline": {
            "working_size": list(plan.working_size), "output_fps": _rate(plan.target_fps),
            "output_size": list(plan.output_size), "scale": plan.sizing.factor,
            "model_scale": plan.sizing.model_factor, "scale_reason": plan.sizing.reason,
            "output": plan.sizing.describe(),
            "stages": [asdict(spec) for spec in plan.stages],
            "memory": {"peak_bytes": memory.estimate(plan), "available_bytes": memory.available(),
                       "fits": memory.fits(plan), "note": memory.describe(plan)},
        },
    }


def _spans(found: Scan) -> tuple[list, list]:
    """Shots as (start, end) seconds, and the black-and-white ones among them, merged."""
    shots = [(a / found.fps, b / found.fps) for a, b in found.shots]
    return shots, _merge([shot for shot, grey in zip(shots, found.grey) if grey])


def _grey_scenes(found: Scan, plan) -> list[dict]:
    """Per grey scene: the references the job would send its colorizer, and in plain
    words where its colour will come from."""
    colorize = next((s for s in plan.stages if s.task == "colorize"), None)
    return [{"from_s": round(scene.start / found.fps, 3), "to_s": round(scene.stop / found.fps, 3),
             "references": [{"at_s": round(r.time_s, 3), "side": r.side, "match": r.score}
                            for r in scene.references],
             "colour": colour_source(scene, colorize)} for scene in found.scenes]


def _overlays(found: Scan, source: media.SourceInfo, crops: Path | None) -> list[dict]:
    """Each burned-in overlay: its box in the source's pixels, its frames and times, and
    the path of its crop when asked for."""
    overlays = found.overlays
    listed = []
    for number, overlay in enumerate(overlays.items if overlays else []):
        item = {"box": overlays.box_at(overlay, (source.width, source.height)),
                "frames": [overlay.first, overlay.last],
                "from_s": round(overlay.first / found.fps, 3),
                "to_s": round((overlay.last + 1) / found.fps, 3)}
        if crops is not None:
            crops.mkdir(parents=True, exist_ok=True)
            where = crops / f"overlay{number:02d}.png"
            cv2.imwrite(str(where), cv2.cvtColor(overlay.crop(), cv2.COLOR_RGB2BGR))
            item["crop"] = str(where)
        listed.append(item)
    return listed


def _merge(spans: list) -> list:
    merged: list = []
    for start, end in spans:
        if merged and abs(merged[-1][1] - start) < 1e-6:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _bands(found: Scan, plan) -> dict:
    """Damaged borders and the head-switching band as the job's analysis finds them (what
    the outpaint stage will rebuild), the widest of any shot, in the source's pixels."""
    per_shot = shot_bands(plan, found.shot_list()).values()
    across = plan.source.width / plan.working_size[0]
    down = plan.source.height / plan.working_size[1]
    widest = {edge: max((getattr(b, edge) for b in per_shot), default=0) for edge in EDGES}
    return {edge: round(lines * (across if edge in ("left", "right") else down))
            for edge, lines in widest.items() if lines}


def _vhs(source: media.SourceInfo) -> dict:
    """The VHS damage the analog stage measures: the chroma's delay and bleed (pixels of
    the source, 0 where there is none) and the share of the pixels that are dropouts. On
    an interlaced source, measured on the first field: a dropout is one line of a field."""
    from services.classical import vhs
    from services.classical.common import to_work
    frames = [to_work(f[::2] if source.interlaced else f)
              for f in itertools.islice(media.decode(source), VHS_SAMPLE)]
    if not frames:
        return {}
    chroma = vhs.measure_chroma(frames[:vhs.MEASURED_FRAMES])
    return {"chroma_delay_px": chroma.delay, "chroma_bleed_px": chroma.bleed,
            "dropout_rate": round(vhs.dropout_rate(frames), 6)}


def _container(path: Path) -> str:
    with media.open_input(path) as container:
        return container.format.name


def _video_codec(path: Path) -> str:
    with media.open_input(path) as container:
        return container.streams.video[0].codec_context.name


def _audio(path: Path) -> list[dict]:
    with media.open_input(path) as container:
        return [{"codec": s.codec_context.name, "sample_rate": s.rate, "channels": s.channels,
                 "language": s.metadata.get("language"),
                 "duration_s": round(float(s.duration * s.time_base), 3) if s.duration else None}
                for s in container.streams.audio]


def _rate(value) -> str:
    return f"{value.numerator}/{value.denominator}"


def _ratio(value) -> str:
    return f"{value.numerator}:{value.denominator}"


def render(report: dict, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(report, indent=2)
    v = report["video"]
    native = report["native_resolution"]
    grey = report["black_and_white"]
    bands = report["damaged_bands"]
    stages, working = report["pipeline"]["stages"], report["pipeline"]["working_size"]
    lines = [
        f"{report['file']}: {report['container']}, {v['codec']} {v['width']}x{v['height']} "
        f"{v['pixel_format']}, {v['duration_s']:.2f}s, {float(_fraction(v['frame_rate'])):.3f} fps"
        + (" (variable)" if v["variable_frame_rate"] else ""),
        f"  scan: {'interlaced, ' + ('top' if v['field_order'] == 'tff' else 'bottom') + ' field first' if v['interlaced'] else 'progressive'}"
        + (f", rotated {v['rotation']} degrees" if v["rotation"] else ""),
        f"  aspect: SAR {v['sample_aspect_ratio']}, DAR {v['display_aspect_ratio']}",
        f"  real resolution: about {native['width']}x{native['height']}",
        f"  shots: {report['shots']['count']} (starting at "
        + ", ".join(f"{s:.2f}s" for s in report["shots"]["starts_s"]) + ")",
        "  black-and-white: " + (", ".join(f"{g['from_s']:.2f}s-{g['to_s']:.2f}s" for g in grey) or "none"),
        *(f"    {g['from_s']:.2f}s-{g['to_s']:.2f}s: {g['colour']}" for g in report["grey_scenes"]),
        "  overlays: " + (", ".join(
            f"{o['from_s']:.2f}s-{o['to_s']:.2f}s at x={o['box'][0]} y={o['box'][1]} "
            f"{o['box'][2]}x{o['box'][3]}" + (f" ({o['crop']})" if "crop" in o else "")
            for o in report.get("overlays", [])) or "none"),
        "  damaged bands: " + (", ".join(f"{k} {n} px" for k, n in bands.items())
                               + f" (of the {v['width']}x{v['height']} frame)" if bands else "none"),
        "  VHS: " + _vhs_words(report.get("vhs", {})),
        "  audio: " + (", ".join(f"{a['codec']} {a['sample_rate']} Hz {a['channels']} ch" for a in report["audio"]) or "none"),
        "  would run: " + " -> ".join(f"{s['task']}={s['model']}" for s in stages)
        + f", working at {working[0]}x{working[1]}"
        + (" (then enlarged by superres)" if any(s["task"] == "superres" for s in stages) else "")
        + f", output at {float(_fraction(report['pipeline']['output_fps'])):.3f} fps",
        "  " + report["pipeline"]["output"],
        "  " + report["pipeline"]["memory"]["note"],
    ]
    return "\n".join(lines)


def _vhs_words(found: dict) -> str:
    if not found:
        return "not measured"
    delay, bleed = found["chroma_delay_px"], found["chroma_bleed_px"]
    return (f"chroma delay {f'{delay:.2f} px' if delay else 'none'}, "
            f"chroma bleed {f'{bleed:.1f} px' if bleed else 'none'}, "
            f"dropouts {100 * found['dropout_rate']:.3f} % of the pixels")


def _fraction(text: str):
    from fractions import Fraction
    return Fraction(text)
