"""Build a whole-night PSG in the Sleep-EDF cassette layout, for timing and memory checks.

No whole-night raw PSG can be had on these machines (``SOURCES.md``), so this tiles the 5-min
Sleep-EDF excerpt ``short_psg.edf`` (SC4001E0, 7 signals at 100 and 1 Hz) to the length of a real
cassette recording, with a random gain (0.7-1.3x) and 2 % white noise per tile so the tiles are
not identical, and links the real ``SC4001EC-Hypnogram.edf`` beside it. The pair reads exactly
like a real night with ``--dataset sleep-edf``; the signals are 5 minutes of wake over and over,
so the scores are meaningless: use it for time, memory and scale, never for accuracy. The output
is a derivative of shared data: keep it out of the repository.

    python tools/make_long_psg.py --out /tmp/sedf_long   # 79,500 s, as SC4001E0-PSG.edf
    /usr/bin/time -v rtsleep-train evaluate --data /tmp/sedf_long --dataset sleep-edf --out R
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import edfio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtsleep.settings import data_dir  # noqa: E402

log = logging.getLogger("make_long_psg")

SC4001_DURATION_S = 79_500.0
"""Length of the real ``SC4001E0-PSG.edf`` (22.1 h, 2650 epochs)."""


def tile_edf(source: Path, out: Path, duration_s: float, seed: int = 0) -> float:
    """Write ``source`` tiled to ``duration_s`` (rounded down to whole copies of it) as ``out``,
    each copy of each signal scaled by a gain drawn from 0.7-1.3 and given white noise of 2 % of
    its standard deviation, clipped to the signal's physical range. Returns the written duration
    in seconds. Raises ``ValueError`` when ``duration_s`` is shorter than ``source``."""
    edf = edfio.read_edf(source)
    n = int(duration_s // edf.duration)
    if n < 1:
        raise ValueError(f"{source}: lasts {edf.duration:g} s, longer than {duration_s:g} s")
    rng = np.random.default_rng(seed)
    signals = []
    for s in edf.signals:
        data = s.data  # (n_samples,) physical units
        noise_sd = 0.02 * float(np.std(data))
        tiles = [data * rng.uniform(0.7, 1.3) + rng.normal(0.0, noise_sd, data.shape)
                 for _ in range(n)]
        signals.append(edfio.EdfSignal(
            np.clip(np.concatenate(tiles), s.physical_min, s.physical_max),  # (n * n_samples,)
            sampling_frequency=s.sampling_frequency, label=s.label,
            physical_dimension=s.physical_dimension,
            physical_range=(s.physical_min, s.physical_max),
            digital_range=(s.digital_min, s.digital_max), prefiltering=s.prefiltering,
        ))
    tiled = edfio.Edf(signals, data_record_duration=edf.data_record_duration,
                      starttime=edf.starttime, recording=edf.recording)
    tiled.write(out)
    return float(tiled.duration)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = data_dir() / "sleep-edf-sc-subset"
    p.add_argument("--out", type=Path, required=True, help="Output folder (created).")
    p.add_argument("--duration-s", type=float, default=SC4001_DURATION_S,
                   help="Length of the night in seconds (default: that of SC4001E0).")
    p.add_argument("--source", type=Path, default=root / "psg-excerpt" / "short_psg.edf")
    p.add_argument("--hypnogram", type=Path,
                   default=root / "hypnograms" / "SC4001EC-Hypnogram.edf")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for path in (args.source, args.hypnogram):
        if not path.is_file():
            log.error("%s: not found", path)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    psg = args.out / "SC4001E0-PSG.edf"
    written = tile_edf(args.source, psg, args.duration_s, args.seed)
    link = args.out / args.hypnogram.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(args.hypnogram.resolve())
    log.info("%s: %.0f s (%.1f h) with %s beside it", psg, written, written / 3600, link.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
