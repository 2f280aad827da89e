"""Sound (issue 16): ``folkrnn play`` renders a tune with abc2midi and fluidsynth, and ``compile --midi``
gives every tune its MIDI file, the same on every run.

Real tools throughout: abc2midi, fluidsynth with Debian's FluidR3 General MIDI soundfont, and
Python's ``wave`` to read what fluidsynth wrote. Two tunes come from the demo model's output
(numbers 203, 204, 826 and 827 of a 3,000-tune run): 203 leaves a chord open, which made
abc2midi 4.84 crash on the next tune when it read a whole volume (so no later tune got a file),
and 826 stops inside a triplet, which made abc2midi play 827's first notes as a triplet.
"""

from __future__ import annotations

import json
import os
import re
import wave
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from folkrnn.schemas.tables import GENERATED
from folkrnn.schemas.vocab import encode
from folkrnn.transforms.abc.tokenize import detokenize
from tests.conftest import folkrnn
from tests.test_books import run_compile

# A double jig: two parts of four bars, each repeated, so 16 bars are played.
JIG = ("M:6/8 K:Cmaj |: c 2 c e d c | d 2 d f e d | c 2 c e d c | B G A c 3 :| "
       "|: g 2 e c 2 e | f 2 d B 2 d | g 2 e c 2 e | d B G c 3 :|")
JIG_BARS_PLAYED = 16
# Tokens of four tunes the demo model wrote (see the module docstring).
OPEN_CHORD = ("M:2/4 K:Cmaj g /2 f /2 | e c c d /2 c /2 | d /2 e /2 d /2 c /2 d g /2 a /2 | _b /2 b /2 c' /2 a /2 g /2 "
              "e /2 d /2 c /2 | d /2 c /2 A /2 c /2 d c :| |: c' /2 d' /2 e' /2 d' /2 c' /2 d' /2 e' /2 c' /2 | c' /2 "
              "b /2 a /2 g /2 a /2 b /2 c' /2 d' /2 | e' d' /2 c' /2 b /2 a /2 g /2 e /2 | f d d B | c c /2 e /2 d /2 "
              "c /2 B /2 c /2 | d /2 c /2 d /2 e /2 c e /2 f /2 | g /2 e /2 c /2 c /2 e /2 g /2 c /2 e /2 | d /2 c /2 "
              "d /2 a /2 c' [ d' c' f' | g c' /2 d' /2 e' /2 c' /2 b /2 a /2 | g /2 c' /2 e' /2 c' /2 d' /2 c' /2 g /2 "
              "c' /2 | e' /2 c' /2 e' /2 d' /2 c' /2 d' /2 c' /2 b /2 | c' /2 b /2 a /2 g /2 a /2 c' /2 e' /2 d' /2 | "
              "e' /2 d' /2 e' /2 d' /2 c' /2 b /2 a /2 g /2 | c' /2 b /2 c' /2 a /2 g /2 e /2 d /2 c /2 | a /2 g /2 "
              "f /2 e /2 d /2 e /2 f /2 g /2 | a /2 ^g /2 f /2 e /2 d 3/2")
AFTER_OPEN_CHORD = ("M:6/8 K:Cmaj E /2 F /2 | G /2 A /2 B /2 A /2 G /2 E /2 D C E | E 3 D C B, | E F /2 G /2 A /2 "
                    "B /2 A G F | E /2 D /2 C C C 2 :| E /2 F /2 | G 2 c c B B | B G D E 2 C /2 F /2 | E 3/2 F /2 G d "
                    "e f | e /2 d /2 c 2 B 2 A /2 B /2 | c 2 B /2 A /2 G A F | D C A, C 2 :| E /2 F /2 | G /2 A /2 G "
                    "F E 2 D | D C D C 2 :| G | A 2 f B G A | B /2 c /2 d e /2 G /2 G G F | E C C D 2 A | B A G E E C | "
                    "C E E E 2 E | F G A F E D | C E G E C C | B, C D E 2 | A | c > d e d c B | c e d c e d | c B A G "
                    "A B | c c c c 2 :|")
OPEN_TRIPLET = ("M:4/4 K:Cmaj e | e d c A d B G A | B A B A G B A F | E G E G A f B G | c e d c B A G B | c e e d c "
                "d e f | g a b a g f e d | c A B G A G B A | B d d f e c c e | g a g f e g c' a | g e d c B A G f | "
                "e g f e d f e f | c A B A G 2 A f | e c d B c d e f | (3 g a b b g a b c' d' | e' c' b c' d' b g f | "
                "e g d B c 2 (3")
AFTER_OPEN_TRIPLET = ("M:4/4 K:Cmaj C E A G G 2 E C | e 2 d c A 3 A | G C C C C 2 E D | C C D E D 3 E | D C A G E 2 "
                      "D > C | B, C D E D 2 E 2 | C 2 B, 2 C 3 D | E G c 2 d > B c 2 | c 2 d c A 2 G G | A 2 c c A 2 "
                      "G 2 | E D E 2 D 2 B G | A 2 A 2 A 3 G | c B c d e 2 d c | A B c A G 4 | c e d e c 3 e | G F E D "
                      "C 3 a | g e g e d 3 c | A 2 G D E 2 C 2 | E 2 G A e 2 a g | e c A A c 2 G 2 | E G A G A G c G | "
                      "E < D A, 2 z 2 C 2 |")
DEMO_TUNES = {203: OPEN_CHORD, 204: AFTER_OPEN_CHORD, 205: JIG, 826: OPEN_TRIPLET, 827: AFTER_OPEN_TRIPLET, 828: JIG}
SILENCE = 0.01  # RMS, of full scale: a melody at fluidsynth's gain here is about 0.04


def write_tunes(path: str, tunes: dict[int, str], titles: dict[int, str] | None = None) -> str:
    """A generated dataset (GENERATED schema, one shard) of ``number -> tokens``."""
    rows = []
    for number, text in tunes.items():
        tokens = text.split()
        title = (titles or {}).get(number, f"Test Tune {number}")
        rows.append({"number": number, "seed": number, "temperature": 1.0, "prime": "", "checkpoint_id": "test",
                     "meter": tokens[0][2:], "mode": tokens[1][3:], "title": title, "tokens": tokens,
                     "token_ids": encode(tokens), "length": len(tokens), "truncated": False,
                     "abc": detokenize(tokens, number=number, title=title)})
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=GENERATED), os.path.join(path, "part-00000.parquet"))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_tunes(str(tmp_path_factory.mktemp("play") / "generated"), DEMO_TUNES)


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Samples (frames x channels, as fractions of full scale) and the frame rate."""
    with wave.open(path, "rb") as audio:
        assert audio.getsampwidth() == 2
        frames = np.frombuffer(audio.readframes(audio.getnframes()), dtype="<i2")
        return frames.reshape(-1, audio.getnchannels()) / 32768.0, audio.getframerate()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples ** 2)))


def played_seconds(dataset: str, number: int, bars: int) -> float:
    """How long ``bars`` bars of the tune last at the tempo abc2midi is given (the Q: of its text)."""
    from folkrnn.pipeline.play import read_tunes
    from folkrnn.transforms.abc.playback import playable_tune

    abc = playable_tune(read_tunes(dataset, [number])[number]).text
    meter = re.search(r"^M:(\d+/\d+)$", abc, re.MULTILINE)[1]
    beat, per_minute = re.search(r'^Q:(?:"[^"]*" )?(\d+/\d+)=(\d+)$', abc, re.MULTILINE).groups()
    return bars * float(Fraction(meter) / Fraction(beat)) * 60 / int(per_minute)


# --- play ---------------------------------------------------------------------------------------------
def test_a_rendered_tune_sounds_for_as_long_as_it_plays(dataset, tmp_path, folkrnn_main):
    result = folkrnn_main("play", dataset, "--numbers", "205", "--out", str(tmp_path / "jig.wav"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"tune 205 (Test Tune 205) -> {tmp_path / 'jig.wav'}\n"
    samples, rate = read_wav(str(tmp_path / "jig.wav"))
    expected = played_seconds(dataset, 205, JIG_BARS_PLAYED)
    seconds = len(samples) / rate
    # fluidsynth renders on until the last note has faded (its release and reverb): a few seconds
    assert expected <= seconds <= expected + 4, (seconds, expected)
    assert rms(samples) > SILENCE
    for start in (0.0, expected / 2, expected - 1.5):  # sounding at the start, the middle and the end of the tune
        assert rms(samples[int(start * rate):int((start + 1) * rate)]) > SILENCE, start
    assert np.abs(samples).max() < 0.99  # not clipped


def test_several_tunes_several_files_in_the_format_of_the_suffix(dataset, tmp_path, folkrnn_main):
    result = folkrnn_main("play", dataset, "--numbers", "205,828", "--out", str(tmp_path / "{number}.flac"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "205.flac").read_bytes()[:4] == (tmp_path / "828.flac").read_bytes()[:4] == b"fLaC"
    result = folkrnn_main("play", dataset, "--numbers", "205", "828", "--out", str(tmp_path / "set.ogg"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("set-*")) == ["set-205.ogg", "set-828.ogg"]
    assert (tmp_path / "set-205.ogg").read_bytes()[:4] == b"OggS"
    result = folkrnn_main("play", dataset, "--numbers", "205", "--out", str(tmp_path / "jig.mid"), "--program", "73")
    assert result.returncode == 0, result.stderr
    midi = (tmp_path / "jig.mid").read_bytes()
    assert midi[:4] == b"MThd" and bytes([0xC0, 73]) in midi  # the melody on General MIDI 73, Flute


def test_a_tune_that_leaves_notes_sounding_still_ends(dataset, tmp_path, folkrnn_main):
    """abc2midi ends tune 203 (a chord never closed) with notes never released: fluidsynth rendered
    it without end (540 MB of WAV in 30 s) until every MIDI file ended by releasing all notes."""
    result = folkrnn_main("play", dataset, "--numbers", "203", "--out", str(tmp_path / "203.wav"))
    assert result.returncode == 0, result.stderr
    samples, rate = read_wav(str(tmp_path / "203.wav"))
    assert len(samples) / rate < 60 and rms(samples) > SILENCE


@pytest.mark.parametrize("argv, message", [
    (["--numbers", "99999"], "no tune numbered 99999 in {data} (its numbers run 203-828)"),
    (["--numbers", "205,99998"], "no tune numbered 99998 in {data}"),
    (["--numbers", "x1"], "argument --numbers: 'x1' is not a tune number"),
    (["--numbers", "205", "--out", "{tmp}/205.mp3"], "--out '{tmp}/205.mp3' must end in .ogg, .oga, .wav, .flac, .mid"),
    (["--numbers", "205", "--program", "128"], "--program must be a General MIDI program from 0 to 127, got 128"),
    (["--numbers", "205", "--out", "{tmp}/a.wav", "--soundfont", "{tmp}/none.sf2"],
     "no soundfont at {tmp}/none.sf2: apt-get install fluid-soundfont-gm, or give --soundfont FILE"),
    (["--numbers", "205", "--out", "{tmp}/a.wav", "--soundfont", "{data}/part-00000.parquet"],
     "--soundfont {data}/part-00000.parquet is not a SoundFont (.sf2) file"),
])
def test_play_mistakes_are_one_line(dataset, tmp_path, folkrnn_main, argv, message):
    argv = [a.format(tmp=tmp_path, data=dataset) for a in argv]
    result = folkrnn_main("play", dataset, *argv)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("folkrnn play: error: ")
    assert message.format(tmp=tmp_path, data=dataset) in result.stderr
    assert not list(tmp_path.iterdir())


def test_missing_tools_name_their_debian_packages(dataset, tmp_path, folkrnn_main, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink("/usr/bin/abc2midi", bin_dir / "abc2midi")
    monkeypatch.setenv("PATH", str(bin_dir))  # abc2midi, and no fluidsynth
    result = folkrnn_main("play", dataset, "--numbers", "205", "--out", str(tmp_path / "a.ogg"))
    assert result.returncode == 2
    assert result.stderr == ("folkrnn play: error: fluidsynth is not installed (apt-get install fluidsynth); "
                             "--out x.mid needs only abc2midi\n")
    assert folkrnn_main("play", dataset, "--numbers", "205", "--out", str(tmp_path / "a.mid")).returncode == 0
    (bin_dir / "abc2midi").unlink()
    result = folkrnn_main("play", dataset, "--numbers", "205", "--out", str(tmp_path / "b.mid"))
    assert result.stderr == "folkrnn play: error: abc2midi is not installed (apt-get install abcmidi)\n"


def test_the_command_end_to_end(dataset):
    """The real entry point: --help, and a mistake is one line and exit code 2."""
    shown = folkrnn("play", "--help")
    assert shown.returncode == 0 and "--numbers" in shown.stdout and "Fiddle" in shown.stdout
    wrong = folkrnn("play", dataset, "--numbers", "1")
    assert wrong.returncode == 2 and wrong.stderr.startswith("folkrnn play: error: no tune numbered 1 in ")
    assert wrong.stderr.count("\n") == 1


# --- the text abc2midi reads ---------------------------------------------------------------------------
def test_tempo_and_instrument_are_added_and_lines_map_back():
    from folkrnn.transforms.abc.playback import playable_tune

    block = "X:7\nT:A Jig\nM:6/8\nL:1/8\nK:Cmaj\nc2c edc |]\n"
    played = playable_tune(block)
    assert played.text == "X:7\nT:A Jig\nM:6/8\nL:1/8\nQ:3/8=112\nK:Cmaj\n%%MIDI program 110\nc2c edc |]\n"
    assert [played.block_line(n) for n in (1, 4, 6, 8)] == [1, 4, 5, 6]
    own_tempo = playable_tune("X:7\nT:A Reel\nM:4/4\nL:1/8\nQ:1/2=100\nK:Cmaj\ncdec |]\n", program=73)
    assert own_tempo.text == "X:7\nT:A Reel\nM:4/4\nL:1/8\nQ:1/2=100\nK:Cmaj\n%%MIDI program 73\ncdec |]\n"


def test_a_third_of_a_unit_plays_as_one_note_of_a_triplet(tmp_path):
    """Tune 9947 of the demo had ``f<e/3``: abc2midi refused the /3 and wrote no file."""
    import subprocess

    from folkrnn.transforms.abc.playback import playable_tune, thirds_as_tuplets

    assert thirds_as_tuplets("f<e/3 [ce]/3 ^F,/3 z/3 c/32") == "f<(3:2:1e/2 (3:2:1[ce]/2 (3:2:1^F,/2 (3:2:1z/2 c/32"

    def midi(body: str, name: str) -> bytes:
        (tmp_path / f"{name}.abc").write_text(playable_tune(f"X:1\nT:t\nM:2/4\nL:1/8\nK:Cmaj\n{body}\n").text)
        done = subprocess.run(["abc2midi", f"{name}.abc", "-o", f"{name}.mid"], cwd=tmp_path, capture_output=True)
        assert done.returncode == 0, done.stdout
        return (tmp_path / f"{name}.mid").read_bytes()

    assert midi("c/3d/3e/3 f3 | g/3a/3b/3 c3 |]", "thirds") == midi("(3c/2d/2e/2 f3 | (3g/2a/2b/2 c3 |]", "triplets")
    assert midi("f<e/3 c/3 c/3 c2 |]", "broken")  # abc2midi plays the pair plainly (it says so) and ends well


def test_end_all_notes_releases_every_channel_and_keeps_the_length():
    from folkrnn.transforms.abc.playback import end_all_notes

    track = bytes([0x00, 0x90, 60, 100, 0x83, 0x60]) + b"\xff\x2f\x00"  # a note on, then end of track 480 ticks on
    midi = b"MThd" + (6).to_bytes(4, "big") + bytes([0, 0, 0, 1, 1, 0xE0]) + b"MTrk" + len(track).to_bytes(4, "big") + track
    ended = end_all_notes(midi)
    body = ended[22:]
    assert int.from_bytes(ended[18:22], "big") == len(body)
    assert body.startswith(track[:-3] + bytes([0xB0, 123, 0]))  # the first release takes the end's delta time
    assert all(bytes([0, 0xB0 + c, 123, 0]) in body for c in range(1, 16)) and body.endswith(b"\x00\xff\x2f\x00")
    assert end_all_notes(b"not midi") == b"not midi"


# --- compile --midi ---------------------------------------------------------------------------------------
def midi_files(out) -> dict[str, bytes]:
    folder = out / "volumes" / "midi" / "folkrnn-volume-01"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_compile_midi_is_complete_and_the_same_on_every_run(dataset, tmp_path):
    """The demo tunes that crashed abc2midi (203 then 204) and made it play 827 wrong (after 826):
    every tune has its file, byte-identical on every run and identical to the tune compiled alone."""
    runs = []
    for k in range(2):
        assert run_compile(dataset, "--out", str(tmp_path / f"run{k}"), "--no-pdf", "--midi", "--quiet",
                           "--key", "C") == 0
        runs.append(midi_files(tmp_path / f"run{k}"))
    assert sorted(runs[0]) == sorted(f"tune-{n}.mid" for n in DEMO_TUNES)
    assert runs[0] == runs[1]
    for number in (204, 205, 827):
        alone = tmp_path / f"alone{number}"
        assert run_compile(dataset, "--out", str(alone), "--no-pdf", "--midi", "--quiet", "--key", "C", "--where",
                           f"number = {number}") == 0
        assert midi_files(alone) == {f"tune-{number}.mid": runs[0][f"tune-{number}.mid"]}
    report = json.loads((tmp_path / "run0" / "volumes" / "folkrnn-volume-01.report.json").read_text())
    assert report["midi_files"] == len(DEMO_TUNES) and report["tunes_without_midi"] == []
    # abc2midi's message about the open chord names the line of the volume's ABC that holds it
    lines = (tmp_path / "run0" / "volumes" / "folkrnn-volume-01.abc").read_text().split("\n")
    chord = next(m for t in report["messages"] if t["number"] == 203 for m in t["abc2midi"]
                 if m["message"].startswith("Too many notes in chord"))
    assert "[d'c'f'" in lines[chord["line"] - 1]


def test_a_tune_abc2midi_cannot_render_is_recorded(tmp_path, monkeypatch, capsys):
    """abc2midi killed on one tune every time (a wrapper aborts it): that tune has no file, the
    report and the summary say so, and the other tunes have theirs."""
    data = write_tunes(str(tmp_path / "generated"), {1: JIG, 2: JIG, 3: JIG}, titles={2: "Crash Me"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "abc2midi").write_text('#!/bin/sh\ngrep -q "^T:Crash Me" "$1" && kill -ABRT $$\n'
                                      'exec /usr/bin/abc2midi "$@"\n')
    (bin_dir / "abc2midi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert run_compile(data, "--out", str(tmp_path / "out"), "--no-pdf", "--midi", "--quiet") == 0
    assert sorted(midi_files(tmp_path / "out")) == ["tune-1.mid", "tune-3.mid"]
    report = json.loads((tmp_path / "out" / "volumes" / "folkrnn-volume-01.report.json").read_text())
    reason = "abc2midi failed 3 times (killed by SIGABRT, killed by SIGABRT, killed by SIGABRT): no MIDI file"
    assert report["tunes_without_midi"] == [{"number": 2, "reason": reason}]
    assert report["midi_files"] == 2 and report["tunes_with_abc2midi_errors"] == 1
    assert "2 MIDI files (none for tunes 2: see the report)" in capsys.readouterr().out
