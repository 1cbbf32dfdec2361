"""NSRR (SHHS) recordings: EDF + ``<name>-nsrr.xml`` annotations (``PSGAnnotation`` schema).

XML: ``<PSGAnnotation><EpochLength>30</EpochLength><ScoredEvents><ScoredEvent>`` with
``EventType`` (``Stages|Stages``, ``Respiratory|Respiratory``, ``Arousals|Arousals``),
``EventConcept`` (``Wake|0``, ``Stage 1 sleep|1`` ... ``Stage 4 sleep|4``, ``REM sleep|5``,
``Movement|6``, ``Unscored|9``; ``Obstructive apnea|Obstructive Apnea``, ``Central apnea|...``,
``Mixed apnea|...``, ``Hypopnea|Hypopnea``, ``SpO2 desaturation|SpO2 desaturation``;
``Arousal|Arousal ()`` and variants), ``Start`` and ``Duration`` in s from the recording start.
The ``Recording Start Time`` event's duration is the recording length. Other events (limb
movements, SpO2 artifacts, ``Unsure``) are not kept; they are counted in a DEBUG log line.

Pairing: ``shhs1-200001.edf`` <-> ``shhs1-200001-nsrr.xml``, searched beside the EDF and then
under the folder three levels up (NSRR's ``polysomnography/edfs/shhs1`` and
``polysomnography/annotations-events-nsrr/shhs1`` layout). An XML without an EDF is a label-only
recording. Stages or events that run more than 30 s past the EDF's last complete epoch are a
``DataError``. Subject = the NSRR id (``200001``), shared by ``shhs1`` and ``shhs2`` visits.
SHHS channel names: ``EEG`` is C4-A1 and ``EEG(sec)`` is C3-A2 (the alias table knows both).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.labels import Annotation, stage_of_label, stages_from_annotations
from rtsleep.data.readers.common import require_file, sha256_files
from rtsleep.data.readers.edf import read_edf
from rtsleep.data.recording import EPOCH_S, Event, EventType, Recording

log = logging.getLogger(__name__)

XML_SUFFIX = "-nsrr.xml"
OVERRUN_ALLOWANCE_S = EPOCH_S

NSRR_EVENTS: dict[str, EventType] = {
    "obstructive apnea": EventType.APNEA_OBSTRUCTIVE,
    "central apnea": EventType.APNEA_CENTRAL,
    "mixed apnea": EventType.APNEA_MIXED,
    "hypopnea": EventType.HYPOPNEA,
    "obstructive hypopnea": EventType.HYPOPNEA,
    "central hypopnea": EventType.HYPOPNEA,
    "mixed hypopnea": EventType.HYPOPNEA,
    "spo2 desaturation": EventType.DESATURATION,
    "arousal": EventType.AROUSAL,
    "asda arousal": EventType.AROUSAL,
    "arousal resulting from respiratory effort": EventType.AROUSAL,
    "spontaneous arousal": EventType.AROUSAL,
    "arousal resulting from chin emg": EventType.AROUSAL,
    "arousal resulting from limb movement": EventType.AROUSAL,
    "respiratory effort related arousal": EventType.AROUSAL,
}
"""First part of ``EventConcept`` (lower case) -> event type."""


def list_nsrr_sources(path: Path) -> list[Path]:
    """EDF files, and ``*-nsrr.xml`` files with no EDF of the same name, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "not found")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    edfs = [p for p in files if p.suffix.lower() == ".edf"]
    names = {p.stem for p in edfs}
    xmls = [
        p for p in files if p.name.endswith(XML_SUFFIX) and p.name[: -len(XML_SUFFIX)] not in names
    ]
    return sorted(edfs + xmls)


def find_annotations(edf: Path) -> Path | None:
    """``<edf stem>-nsrr.xml`` beside the EDF, else under the folder three levels up."""
    name = f"{edf.stem}{XML_SUFFIX}"
    beside = edf.with_name(name)
    if beside.is_file():
        return beside
    root = edf.parents[min(2, len(edf.parents) - 1)]
    found = sorted(root.rglob(name))
    return found[0] if found else None


def parse_nsrr_xml(path: Path) -> tuple[list[Annotation], float | None]:
    """``([(start_s, duration_s, "EventType/EventConcept")], recording length or None)``.

    The label joins the first parts of ``EventType`` and ``EventConcept`` with ``/``
    (``"Stages/Stage 2 sleep|2"`` keeps the whole stage concept, which :data:`STAGE_LABELS`
    knows). Malformed XML, a missing ``ScoredEvents`` or a non-30-s epoch length -> ``DataError``.
    """
    require_file(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(path, f"malformed XML: {err}") from None
    if root.tag != "PSGAnnotation":
        raise DataError(path, f"root element is <{root.tag}>, expected <PSGAnnotation>")
    epoch = root.findtext("EpochLength")
    if epoch is not None and epoch.strip() and float(epoch) != EPOCH_S:
        raise DataError(path, f"epoch length {epoch} s, expected 30")
    scored = root.find("ScoredEvents")
    if scored is None:
        raise DataError(path, "no <ScoredEvents>")
    out: list[Annotation] = []
    length: float | None = None
    for i, ev in enumerate(scored.findall("ScoredEvent")):
        concept = (ev.findtext("EventConcept") or "").strip()
        etype = (ev.findtext("EventType") or "").strip().split("|")[0]
        try:
            start = float(ev.findtext("Start") or "nan")
            duration = float(ev.findtext("Duration") or "0")
        except ValueError:
            raise DataError(path, f"event {i} ({concept!r}): Start/Duration not numbers") from None
        if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
            raise DataError(path, f"event {i} ({concept!r}): start {start}, duration {duration}")
        if concept == "Recording Start Time":
            length = duration
            continue
        out.append((start, duration, f"{etype}/{concept}"))
    return out, length


def _split(label: str) -> tuple[str, str]:
    etype, _, concept = label.partition("/")
    return etype, concept


def nsrr_events(annotations: list[Annotation]) -> list[Event]:
    """Respiratory events and arousals among the parsed annotations."""
    events: list[Event] = []
    skipped: Counter[str] = Counter()
    for start, duration, label in annotations:
        etype, concept = _split(label)
        if etype == "Stages":
            continue
        key = concept.split("|")[0].strip().lower()
        if key in NSRR_EVENTS:
            events.append(Event(start, duration, NSRR_EVENTS[key], concept))
        else:
            skipped[concept] += 1
    if skipped:
        log.debug("NSRR events not kept: %s", dict(skipped))
    return events


def _stage_annotations(annotations: list[Annotation], path: Path) -> list[Annotation]:
    out: list[Annotation] = []
    for start, duration, label in annotations:
        etype, concept = _split(label)
        if etype != "Stages":
            continue
        if stage_of_label(concept) is None:
            raise DataError(path, f"unknown stage concept {concept!r}")
        out.append((start, duration, concept))
    return out


def _subject(stem: str) -> str:
    return stem.split("-", 1)[1] if "-" in stem else stem


def read_nsrr(source: Path, channel_map: ChannelMap | None = None) -> Recording:
    """An NSRR EDF with its XML annotations, or an XML alone (label-only)."""
    require_file(source)
    if source.name.endswith(XML_SUFFIX):
        return _label_only(source)
    xml = find_annotations(source)
    rec = read_edf(source, channel_map, dataset="shhs", subject=_subject(source.stem))
    if xml is None:
        log.warning("%s: no %s found; recording has no stages", source, source.stem + XML_SUFFIX)
        return rec
    annotations, _ = parse_nsrr_xml(xml)
    n_epochs = int(rec.duration_s // EPOCH_S)
    rec.stages = stages_from_annotations(
        _stage_annotations(annotations, xml), n_epochs, source=xml,
        allow_overrun_s=OVERRUN_ALLOWANCE_S,
    )
    rec.events = nsrr_events(annotations)
    limit = n_epochs * EPOCH_S + OVERRUN_ALLOWANCE_S
    late = [e for e in rec.events if e.end_s > limit]
    if late:
        raise DataError(
            xml, f"{len(late)} events end after the recording ({rec.duration_s:.0f} s), first "
            f"{late[0].label!r} at {late[0].onset_s:.0f} s",
        )
    rec.source_sha256 = sha256_files(source, xml)
    return rec


def _label_only(xml: Path) -> Recording:
    annotations, length = parse_nsrr_xml(xml)
    stage_ann = _stage_annotations(annotations, xml)
    n_epochs = int(length // EPOCH_S) if length else None
    stages = stages_from_annotations(
        stage_ann, n_epochs, source=xml, allow_overrun_s=OVERRUN_ALLOWANCE_S
    )
    stem = xml.name[: -len(XML_SUFFIX)]
    return Recording(
        id=stem,
        dataset="shhs",
        subject=_subject(stem),
        source=xml,
        stages=stages,
        events=nsrr_events(annotations),
        source_sha256=sha256_files(xml),
        duration_hint_s=length if length else len(stages) * EPOCH_S,
    )
