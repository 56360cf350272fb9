import torch

from polyfuse.config import AugmentConfig, Config
from polyfuse.data.augment import Augmenter


class _Proc:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Procs:
    cfg = Config()
    by_modality = {"image": _Proc(mean=torch.full((3, 1, 1), 0.5), std=torch.full((3, 1, 1), 0.5)),
                   "audio": _Proc(std=2.0), "text": _Proc(mask_id=4, pad_id=0)}


def batch():
    g = torch.Generator().manual_seed(0)
    mel_mask = torch.zeros(3, 40, dtype=torch.bool)
    mel_mask[0, :40], mel_mask[1, :24] = True, True                        # row 2 has no audio
    ids = torch.randint(5, 100, (3, 10), generator=g)
    text_mask = torch.arange(10)[None] < torch.tensor([[10], [4], [1]])
    return {"image": {"pixels": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1,
                      "present": torch.tensor([True, False, True]), "modality": "image"},
            "audio": {"mel": torch.randn(3, 16, 40, generator=g) * mel_mask[:, None], "mask": mel_mask,
                      "modality": "audio"},
            "text": {"ids": ids * text_mask, "mask": text_mask, "modality": "text"}}


def run(seed, **cfg):
    torch.manual_seed(seed)
    return Augmenter(AugmentConfig(enabled=True, **cfg), _Procs())(batch())


def test_seeded_and_shape_preserving():
    a, b, c = run(0), run(0), run(1)
    for col, key in (("image", "pixels"), ("audio", "mel"), ("text", "ids")):
        assert torch.equal(a[col][key], b[col][key]), col            # same seed, same augmentation
        assert not torch.equal(a[col][key], c[col][key]), col        # another seed, another
    assert a["image"]["pixels"].shape == (3, 3, 16, 16) and a["audio"]["mel"].shape == (3, 16, 40)


def test_absent_cells_and_padding_stay_untouched():
    out, orig = run(0, audio_crop=0.0, audio_speed=0.0), batch()
    assert torch.equal(out["image"]["pixels"][1], orig["image"]["pixels"][1])
    assert torch.equal(out["audio"]["mask"], orig["audio"]["mask"])
    assert (out["audio"]["mel"][1, :, 24:] == 0).all() and (out["audio"]["mel"][2] == 0).all()
    assert not torch.equal(out["image"]["pixels"][0], orig["image"]["pixels"][0])


def test_text_token_dropout_and_span_mask():
    out = run(0, token_dropout=0.3, span_mask=0.2)["text"]
    lengths = out["mask"].sum(1)
    assert lengths[0] < 10 and (lengths >= 1).all()                 # tokens dropped, never all
    assert (out["ids"][0][out["mask"][0]] == 4).sum() >= 1          # a span became [MASK]
    assert (out["ids"][~out["mask"]] == 0).all()                    # padding is padding
    assert torch.equal(out["ids"][2, :1], batch()["text"]["ids"][2, :1])   # a 1-token text is kept whole


def test_flip_only_when_allowed():
    torch.manual_seed(0)
    no = run(0, image_crop_scale=1.0, color_jitter=0.0)["image"]["pixels"]
    orig = batch()["image"]["pixels"]
    assert torch.allclose(no, orig, atol=1e-5)                      # full crop, no jitter, no flip: identity
    flips = [run(s, image_crop_scale=1.0, color_jitter=0.0, image_flip=True)["image"]["pixels"][0]
             for s in range(8)]
    assert any(torch.allclose(f, orig[0].flip(-1), atol=1e-5) for f in flips)


def test_a_pretrained_text_towers_ids_are_never_edited():
    """Token dropout on a tower's ids could delete [CLS]/[SEP] and would defeat its feature cache."""
    from polyfuse.data.pretrained import TowerTextProcessor

    class Tower(TowerTextProcessor):
        mask_id, pad_id = 4, 0

        def __init__(self):
            pass

    class Procs:
        cfg = Config()
        by_modality = {**_Procs.by_modality, "text": Tower()}

    torch.manual_seed(0)
    out = Augmenter(AugmentConfig(enabled=True, token_dropout=0.5, span_mask=0.3), Procs())(batch())
    assert torch.equal(out["text"]["ids"], batch()["text"]["ids"])
    assert not torch.equal(out["image"]["pixels"], batch()["image"]["pixels"])      # the rest still augmented


def test_freq_warp_stretches_the_mel_axis():
    from polyfuse.data.augment import freq_warp
    mel = torch.zeros(64, 40, 5)
    mel[:, 10] = 1.0                                       # one band lit
    torch.manual_seed(0)
    out = freq_warp(mel, 0.1)
    peaks = out[:, :, 0].argmax(1).float()                 # where band 10 went, per row
    assert peaks.min() >= 9 and peaks.max() <= 11 and peaks.unique().numel() > 1
    assert torch.equal(freq_warp(mel, 0.0), mel)
    assert torch.allclose(out.sum(1), out.sum(1)[:, :1].expand(-1, 5))   # the same warp for every frame


def test_audio_crop_keeps_a_random_stretch_at_the_start():
    """A crop keeps >= 1 - audio_crop of each clip, moved to the start; the rest becomes padding."""
    orig = batch()["audio"]
    kept = set()
    for seed in range(12):
        out = run(seed, audio_crop=0.5, audio_shift=0.0, time_masks=0, freq_masks=0, freq_warp=0.0, audio_speed=0.0,
                  audio_gain_db=0.0, audio_noise=0.0, audio_filter_db=0.0)["audio"]
        n = int(out["mask"][0].sum())
        assert 20 <= n <= 40 and out["mask"][0, :n].all() and (out["mel"][0, :, n:] == 0).all()
        starts = [t for t in range(40 - n + 1) if torch.allclose(out["mel"][0, :, :n], orig["mel"][0, :, t:t + n])]
        assert starts, "the kept frames are a contiguous stretch of the clip"
        assert int(out["mask"][1].sum()) >= 12 and not out["mask"][2].any()     # shorter clip; absent stays absent
        kept.add((n, starts[0]))
    assert len(kept) > 3


def test_audio_speed_plays_each_clip_faster_or_slower_and_keeps_all_of_it():
    """Tempo: a clip becomes n / rate frames (capped at the batch's width, so its end is never cut),
    the same sound in order: a ramp stays a ramp from the clip's first value to its last."""
    quiet = dict(audio_crop=0.0, audio_shift=0.0, time_masks=0, freq_masks=0, freq_warp=0.0, audio_gain_db=0.0,
                 audio_noise=0.0, audio_filter_db=0.0)
    ramp = batch()
    ramp["audio"]["mel"][1, :, :24] = torch.linspace(-1, 1, 24)            # row 1: 24 of 40 frames
    lengths = set()
    for seed in range(16):
        torch.manual_seed(seed)
        b = batch()
        b["audio"]["mel"][1] = ramp["audio"]["mel"][1]
        out = Augmenter(AugmentConfig(enabled=True, audio_speed=0.3, **quiet), _Procs())(b)["audio"]
        n = int(out["mask"][1].sum())
        assert 18 <= n <= 35 and out["mask"][1, :n].all() and (out["mel"][1, :, n:] == 0).all()
        x = out["mel"][1, 0, :n]
        assert abs(float(x[0]) + 1) < 1e-5 and abs(float(x[-1]) - 1) < 1e-5 and (x.diff() > 0).all()
        assert int(out["mask"][0].sum()) <= 40 and not out["mask"][2].any()   # never past the width; absent stays absent
        lengths.add(n)
    assert len(lengths) > 4
    assert torch.equal(run(0, audio_speed=0.0, **quiet)["audio"]["mask"], batch()["audio"]["mask"])


def test_random_filter_colours_every_frame_alike_within_its_bound():
    """The random equaliser adds one smooth curve over the mel bands to each clip: the same for all
    its frames, within +-audio_filter_db, and padding stays zero."""
    quiet = dict(audio_crop=0.0, audio_shift=0.0, time_masks=0, freq_masks=0, freq_warp=0.0, audio_gain_db=0.0,
                 audio_noise=0.0, audio_speed=0.0)
    orig = batch()["audio"]
    assert torch.allclose(run(0, audio_filter_db=0.0, **quiet)["audio"]["mel"], orig["mel"])
    out = run(0, audio_filter_db=6.0, **quiet)["audio"]
    delta = out["mel"][0] - orig["mel"][0]                                  # log power (a stand-in processor: unit std)
    assert torch.allclose(delta, delta[:, :1].expand(-1, 40), atol=1e-5)   # one curve for every frame
    db = delta[:, 0] * 10 / torch.log(torch.tensor(10.0))
    assert db.abs().max() <= 6.0 + 1e-4 and db.std() > 0.1
    assert (db.diff().abs() <= 12.0 / (16 / 3) + 1e-4).all()                 # linear between 4 points: smooth
    assert (out["mel"][1, :, 24:] == 0).all() and (out["mel"][2] == 0).all()
