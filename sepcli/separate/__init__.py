"""Separation: audio in -> one stream per speaker out. The one path used by `separate`, `batch` and `eval`.

Data flow of one input (nothing holds the whole signal; see docs/how-it-works.md):
  blocks (soundfile) -> mono (mean, or one channel) -> soxr to the model's rate
  [first pass, only when the model wants a normalised input (not for raw outputs, see `off` below):
   streaming BS.1770 loudness -> input gain]
  -> SegmentStream (segments of `segment` s, `overlap` fraction) -> model, `batch_size` segments at a time
  -> Stitcher (speaker order aligned on the overlap, least-squares gain per speaker, crossfade summing to one)
  -> soxr back to the output rate (default: the input's rate and exactly the input's length)
  -> output loudness:  off   = written as produced (one pass); an input separated in one segment (--segment 0,
                               or not longer than one) is then the network's own output for the input's samples as
                               they are (no input normalisation, no stitcher gain), as the authors' code computes
                               it; with several segments the stitcher's gains stay (their scales must agree)
                       match = each speaker at its level in the mix (the stitcher makes the speakers add up to
                               the mixture); a raw float32 temporary stream is written first, and if a speaker
                               would clip a fixed-point file (pass -1 dBFS in a lossy one) all speakers are
                               lowered by one common gain (flag `scaled_to_avoid_clipping`);
                       LUFS  = each speaker normalised to that integrated loudness from the raw temporary
                               stream, the gain lowered if the peak would pass -1 dBFS (flag `peak_limited`)
  -> each speaker streamed to its file through a temporary file renamed when complete.

Reliability (see also audio/io.py):
- every problem with one input is a FileResult with status `error` and a one-line message naming the file;
  separate_file never raises for a per-file problem (only UsageError for bad options, and
  KeyboardInterrupt/SystemExit, after cleaning up);
- no partial output: outputs are written to temporary files, all finished before any is renamed, and if the
  run fails or is interrupted after some were renamed, those are removed again (all speakers or none); a
  process killed outright (SIGKILL, the OOM killer, power loss) cannot clean up, so its claim's lock file
  journals the temporary files and, during the renames, the outputs: the next run that claims the input removes
  what was left and separates it again (flag `recovered_interrupted_run`), or keeps the outputs if all were
  renamed;
- NaN/Inf input samples are replaced by 0 (flag `nonfinite_input_replaced`); a model that produces NaN/Inf is
  an error, never a file;
- concurrent processes: an input's outputs are claimed with an O_EXCL lock file `.sepcli-lock-<hash>` in the
  output folder (stale locks of dead processes on this host are taken over); a busy input is `skipped`
  (flag `busy`) in batch/resume mode, an error otherwise; outputs are never replaced without --overwrite,
  even by a race (AtomicWriter.commit);
- batch: inputs with the same stem in one folder (a.wav, a.flac) are disambiguated by using the full file
  name as the stem (a.wav_spk1.wav, a.flac_spk1.wav); an output folder equal to the input folder is refused;
  inputs are never written over (protect covers every input of the run, not just this shard).

Modules: `options` (SeparationOptions, name templates, output paths and folders), `claim` (OutputClaim, the lock
and crash journal of one input's outputs), `results` (FileResult, OutputInfo), `separator` (the streaming core),
`outputs` (one input's files and their loudness decision), `batch` (discovery, shard, manifest) and `bench`
(speed on a synthetic input).

`SeparationOptions` carries every user choice; `Separator(model, options)` loads the model once.
`model` is a zoo name / alias / folder path, a runtime.loader.LoadedModel, or any callable
[B, T] -> [B, n_src, T] with `sample_rate` and `n_src` attributes (optional `segment`, `overlap`,
`input_loudness`) - which is how tests inject a test double.
"""

from .batch import AUDIO_EXTENSIONS, batch_stems, find_inputs, parse_shard, separate_batch, shard_files
from .bench import bench_model, synthetic_mixture
from .claim import Busy, OutputClaim
from .options import (
    MAX_SHIFTS,
    SHIFT_STEP_S,
    TEMPLATE_FIELDS,
    SeparationOptions,
    UsageError,
    check_distinct_outputs,
    check_output_folder,
    check_template,
    make_output_folder,
    output_paths,
    safe_relative,
)
from .results import FileResult, OutputInfo
from .separator import Cancelled, Separator

__all__ = [
    "AUDIO_EXTENSIONS", "MAX_SHIFTS", "SHIFT_STEP_S", "TEMPLATE_FIELDS", "Busy", "Cancelled", "FileResult",
    "OutputClaim", "OutputInfo", "SeparationOptions", "Separator", "UsageError", "batch_stems", "bench_model",
    "check_distinct_outputs", "check_output_folder", "check_template", "find_inputs", "make_output_folder",
    "output_paths", "parse_shard", "safe_relative", "separate_batch", "shard_files", "synthetic_mixture",
]
