"""Each part of the model on small random tensors: shapes, formulas, and the numbers it gives."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from conftest import TINY_HPARAMS, make_batch
from torch.distributions import Gamma, MultivariateNormal, Normal, Poisson

from lfads.model import registry
from lfads.model.augmentations import (
    AugmentationStack,
    CoordinatedDropout,
    MemberAugmentations,
    SampleValidation,
    SelectiveBackprop,
    SpikeJitter,
    TemporalShift,
)
from lfads.model.batch import SessionBatch
from lfads.model.decoder import Decoder
from lfads.model.encoders import Encoder
from lfads.model.fused import StackedGRUSequence
from lfads.model.gru import BidirectionalGRU, ClippedGRUCell, scan_reference, scan_together
from lfads.model.hparams import Component, HParams
from lfads.model.lfads import LFADS, SessionDims, _sample_major_rows, ramp
from lfads.model.loops import RNN_IMPLS
from lfads.model.members import MemberLinear, MemberRandom, init_generators
from lfads.model.metrics import BitsPerSpike, RateR2
from lfads.model.priors import (
    AutoregressiveNormalPrior,
    MultivariateNormalPrior,
    MultivariateStudentTPrior,
    NullPrior,
)
from lfads.model.readin import pcr_readins
from lfads.model.recons import (
    MSE,
    Gaussian,
    ZeroInflatedGamma,
)
from lfads.model.recons import (
    Gamma as GammaRecon,
)
from lfads.model.recons import (
    Poisson as PoissonRecon,
)

# The name test_bad_component_option_names_the_part uses (HParams-error tests are being rewritten
# elsewhere): the tiny model of conftest.
SMALL = TINY_HPARAMS
FAST = RNN_IMPLS["fast"]


# -- hyperparameters and registry -----------------------------------------------------------------
def test_hparams_round_trip_plain_data_and_yaml(tmp_path):
    hp = HParams.from_dict(
        {
            **TINY_HPARAMS,
            "reconstruction": "gaussian",
            "infer_augmentations": ["selective_backprop"],
        }
    )
    data = hp.to_dict()
    assert data["reconstruction"] == {"name": "gaussian"} and data["infer_augmentations"] == [
        {"name": "selective_backprop"}
    ]
    assert HParams.from_dict(data) == hp
    (tmp_path / "hp.yaml").write_text(hp.to_yaml())
    assert HParams.from_yaml(tmp_path / "hp.yaml") == hp
    defaults = HParams()  # lfads-torch's mc_maze sizes
    assert (
        defaults.ic_enc_dim,
        defaults.ci_enc_dim,
        defaults.con_dim,
        defaults.co_dim,
        defaults.ic_dim,
        defaults.gen_dim,
        defaults.fac_dim,
        defaults.batch_size,
    ) == (64, 64, 64, 4, 64, 200, 100, 256)
    assert defaults.ic_prior == Component("multivariate_normal", {"mean": 0.0, "variance": 0.1})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"learning_rate": 0.1}, r"unknown hyperparameter\(s\) \['learning_rate'\]; known: \["),
        ({"droput": 0.1}, r"unknown hyperparameter\(s\) \['droput'\]; did you mean 'dropout'\?$"),
        ({"dropout": 1.5}, "dropout: must be in"),
        ({"gen_dim": 2.5}, "gen_dim: expected an integer"),
        ({"variational": "yes"}, "variational: expected true or false"),
        ({"ic_prior": "laplace"}, "ic_prior: no prior named 'laplace'"),
        ({"train_augmentations": "coordinated_dropout"}, "train_augmentations: expected a list"),
        ({"variational": False}, "variational: false needs null priors"),
        ({"plugins": ["no_such_module_xyz"]}, "plugins: cannot import 'no_such_module_xyz'"),
        ({"plugins": "mylab.parts"}, "plugins: expected a list of strings"),
        ({"lr": float("inf")}, "lr: expected a finite number, got inf"),
        ({"kl_co_scale": float("nan")}, "kl_co_scale: expected a finite number, got nan"),
    ],
)
def test_hparams_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        HParams.from_dict(data)


def test_hparams_checked_without_importing_plugins():
    """The workflow checks hyperparameters without running plugin code: a part name that only a
    listed plugin can register is accepted then; without plugins it is still an error."""
    data = {"plugins": ["no_such_module_xyz"], "ic_prior": {"name": "laplace", "scale": 0.5}}
    hp = HParams.from_dict(data, import_plugins=False)
    assert hp.ic_prior == Component("laplace", {"scale": 0.5})
    with pytest.raises(ValueError, match="ic_prior: no prior named 'laplace'"):
        HParams.from_dict({"ic_prior": "laplace"}, import_plugins=False)
    with pytest.raises(ValueError, match="gen_dim: expected an integer"):
        HParams.from_dict({**data, "gen_dim": 2.5}, import_plugins=False)


def test_yaml_numbers_without_dot_and_bad_file(tmp_path):
    (tmp_path / "hp.yaml").write_text(
        "kl_co_scale: 1e-5\nlr: 1\n"
    )  # YAML 1.1 reads 1e-5 as a string
    hp = HParams.from_yaml(tmp_path / "hp.yaml")
    assert hp.kl_co_scale == 1e-5 and hp.lr == 1.0
    (tmp_path / "bad.yaml").write_text("gen_dimm: 3\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown hyperparameter"):
        HParams.from_yaml(tmp_path / "bad.yaml")


def test_every_builtin_resolves_to_its_interface():
    from lfads.model.augmentations import Augmentation
    from lfads.model.priors import Prior
    from lfads.model.recons import Reconstruction

    bases = {"prior": Prior, "reconstruction": Reconstruction, "augmentation": Augmentation}
    for kind, base in bases.items():
        for name in registry.names(kind):
            assert issubclass(registry.lookup(kind, name), base), (kind, name)


def test_bad_component_option_names_the_part():
    import dataclasses

    # (HParams.from_dict refuses it already, for a built-in part: a plugin's reaches the model)
    bad = Component("multivariate_normal", {"varaince": 0.1})
    hp = dataclasses.replace(HParams.from_dict(SMALL), ic_prior=bad)
    with pytest.raises(
        ValueError, match="prior 'multivariate_normal': bad options \\['varaince'\\]"
    ):
        LFADS(hp, [SessionDims(4, 2, 6, 2)])


def test_every_part_takes_keyword_arguments_only():
    """Sizes and options reach a part by name: a positional argument is a TypeError."""
    classes = [
        registry.lookup(kind, name) for kind in registry.KINDS for name in registry.names(kind)
    ]
    classes += [Encoder, Decoder, ClippedGRUCell, BidirectionalGRU]
    for cls in classes:
        parameters = list(inspect.signature(cls).parameters.values())
        assert parameters and all(p.kind is p.KEYWORD_ONLY for p in parameters), cls
    with pytest.raises(TypeError):
        CoordinatedDropout(0.3)
    with pytest.raises(TypeError):
        MultivariateNormalPrior(3)


def parts(model: LFADS, member: int = 0) -> dict[str, object]:
    """A member's augmentations by stack and class, e.g. parts(model)["train/SampleValidation"]."""
    return {
        f"{stack}/{type(a).__name__}": a
        for stack, augmentations in (
            ("train", model.train_augmentations),
            ("infer", model.infer_augmentations),
        )
        for a in augmentations.stacks[member].augmentations
    }


def test_flat_keys_are_written_into_the_part_options_once():
    hp = HParams.from_dict(
        {
            **TINY_HPARAMS,
            "cd_rate": 0.2,
            "cd_pass_rate": 0.1,
            "ic_enc_seq_len": 2,
            "sv_rate": 0.25,
            "train_augmentations": ["coordinated_dropout", "sample_validation"],
            "infer_augmentations": [{"name": "coordinated_dropout", "rate": 0.2}],
        }
    )
    assert hp.train_augmentations == (
        Component("coordinated_dropout", {"rate": 0.2, "pass_rate": 0.1, "ic_enc_seq_len": 2}),
        Component("sample_validation", {"rate": 0.25, "ic_enc_seq_len": 2}),
    )
    assert hp.infer_augmentations[0] == hp.train_augmentations[0]
    built = parts(LFADS(hp, [SessionDims(6, 2, 9, 3)]))
    cd, sv = built["train/CoordinatedDropout"], built["train/SampleValidation"]
    assert (cd.rate, cd.pass_rate, cd.ic_enc_seq_len) == (0.2, 0.1, 2)
    assert (sv.rate, sv.ic_enc_seq_len) == (0.25, 2)
    assert built["infer/CoordinatedDropout"].rate == 0.2
    assert HParams.from_dict(hp.to_dict()) == hp  # both copies round-trip, and agree
    # cd_rate is a member's own: in a pack, each member's stacks have its rate
    pack = LFADS([hp, hp.replace(seed=1, cd_rate=0.4)], [SessionDims(6, 2, 9, 3)])
    assert [
        parts(pack, m)[f"{stack}/CoordinatedDropout"].rate
        for m in (0, 1)
        for stack in ("train", "infer")
    ] == [0.2, 0.2, 0.4, 0.4]


def test_an_option_given_only_in_a_part_sets_its_flat_key():
    hp = HParams.from_dict(
        {
            "train_augmentations": [
                {"name": "coordinated_dropout", "rate": 0.1},
                {"name": "sample_validation", "rate": 0.2},
            ]
        }
    )
    assert (hp.cd_rate, hp.sv_rate) == (0.1, 0.2)  # the data module draws sv_mask from sv_rate
    assert hp.train_augmentations[0].options == {"rate": 0.1, "pass_rate": 0.0, "ic_enc_seq_len": 0}
    assert HParams.from_dict(hp.to_dict()) == hp
    # both stacks name the setting the same way: fine; differently: an error naming both
    same = {"name": "coordinated_dropout", "rate": 0.1}
    assert HParams.from_dict(
        {"train_augmentations": [same], "infer_augmentations": [same]}
    ).infer_augmentations == (hp.train_augmentations[0],)
    with pytest.raises(
        ValueError,
        match=r"train_augmentations\[0\]\.rate \(0\.1\) and infer_augmentations\[0\]\.rate "
        r"\(0\.4\) are both cd_rate",
    ):
        HParams.from_dict(
            {"train_augmentations": [same], "infer_augmentations": [{**same, "rate": 0.4}]}
        )


def test_a_part_option_that_disagrees_with_its_flat_key_is_an_error():
    with pytest.raises(
        ValueError, match=r"train_augmentations\[1\]\.rate is 0\.5 but cd_rate is 0\.3"
    ):
        HParams.from_dict(
            {
                "cd_rate": 0.3,
                "train_augmentations": [
                    "selective_backprop",
                    {"name": "coordinated_dropout", "rate": 0.5},
                ],
            }
        )
    with pytest.raises(ValueError, match=r"train_augmentations\[0\]\.rate: expected a number"):
        HParams.from_dict({"train_augmentations": [{"name": "coordinated_dropout", "rate": "x"}]})


def test_replace_keeps_flat_keys_and_part_options_equal():
    hp = HParams.from_dict({"infer_augmentations": ["coordinated_dropout"]})
    changed = hp.replace(cd_rate=0.5)
    assert changed.cd_rate == 0.5
    assert [
        s.options["rate"] for s in changed.train_augmentations + changed.infer_augmentations
    ] == [
        0.5,
        0.5,
    ]
    by_part = hp.replace(train_augmentations=[{"name": "coordinated_dropout", "rate": 0.4}])
    assert by_part.cd_rate == 0.4 and by_part.infer_augmentations[0].options["rate"] == 0.4
    assert hp.replace(max_epochs=3).train_augmentations == hp.train_augmentations


def test_rnn_impl_is_not_a_hyperparameter():
    assert "rnn_impl" not in HParams().to_dict()
    with pytest.raises(ValueError, match="rnn_impl: no longer a hyperparameter; choose"):
        HParams.from_dict({"rnn_impl": "fast"})


# -- members and GRU ------------------------------------------------------------------------------
def test_member_linear_is_one_linear_map_per_member():
    """Weight (P, out, in) ~ N(0, 1/in) from each member's own stream (member 0 of a pack has the
    weights of a pack of one), bias (P, out) zero; member m's rows meet only member m's matrix."""
    torch.manual_seed(0)  # (the test's data; the layers' weights come from their generators)
    alone = MemberLinear(300, 50, init_generators([0]))
    pack = MemberLinear(300, 50, init_generators([0, 1]))
    assert pack.weight.shape == (2, 50, 300) and torch.equal(pack.bias, torch.zeros(2, 50))
    assert torch.equal(pack.weight[0], alone.weight[0])
    assert not torch.equal(pack.weight[1], pack.weight[0])
    assert abs(pack.weight.std().item() - 300**-0.5) < 0.003  # N(0, 1/in)
    with torch.no_grad():
        pack.bias.normal_()
    x = torch.randn(2, 4, 7, 300)
    expected = torch.stack([x[m] @ pack.weight[m].T + pack.bias[m] for m in range(2)])
    torch.testing.assert_close(pack(x), expected)
    no_bias = MemberLinear(3, 5, init_generators([0]), bias=False, std=2.0)
    assert no_bias.bias is None
    torch.testing.assert_close(no_bias(x[:1, :, :, :3]), x[:1, :, :, :3] @ no_bias.weight[0].T)


def test_gru_cell_formula_init_and_clip():
    torch.manual_seed(0)  # (the test's data)
    cell = ClippedGRUCell(input_size=3, hidden_size=4, clip=5.0, generators=init_generators([0]))
    assert cell.weight_ih.shape == (1, 12, 3) and cell.weight_hh.shape == (1, 12, 4)
    assert torch.equal(cell.bias_ih[:, :8], torch.ones(1, 8)) and torch.equal(
        cell.bias_ih[:, 8:], torch.zeros(1, 4)
    )
    x, h = torch.randn(1, 2, 3), torch.randn(1, 2, 4)
    w_z, w_r, w_n = cell.weight_ih[0].chunk(3)
    u_z, u_r, u_n = cell.weight_hh[0].chunk(3)
    b_z, b_r, b_n = cell.bias_ih[0].chunk(3)
    z = torch.sigmoid(x[0] @ w_z.T + b_z + h[0] @ u_z.T)
    r = torch.sigmoid(x[0] @ w_r.T + b_r + h[0] @ u_r.T)
    # reset before the recurrent matmul (TF GRU)
    n = torch.tanh(x[0] @ w_n.T + b_n + (r * h[0]) @ u_n.T)
    torch.testing.assert_close(cell(x, h), (z * h[0] + (1 - z) * n)[None])
    # a pack of two: member 0 has the weights of the cell alone, and steps as it does
    pack = ClippedGRUCell(input_size=3, hidden_size=4, clip=5.0, generators=init_generators([0, 1]))
    assert torch.equal(pack.weight_ih[0], cell.weight_ih[0])
    assert torch.equal(pack.weight_hh[0], cell.weight_hh[0])
    assert not torch.equal(pack.weight_hh[1], pack.weight_hh[0])
    torch.testing.assert_close(pack(torch.cat([x, 2 * x]), torch.cat([h, -h]))[:1], cell(x, h))
    big = ClippedGRUCell(
        input_size=300, hidden_size=50, fan_in=350, generators=init_generators([0])
    )
    assert abs(big.weight_ih.std().item() - 350**-0.5) < 0.003  # N(0, 1/fan_in)
    with torch.no_grad():
        cell.weight_hh.mul_(100.0)
        cell.bias_ih[:, 8:] = 50.0
    (states,) = FAST.scan_encoders([cell], [torch.randn(1, 2, 30, 3) * 10], [torch.zeros(1, 2, 4)])
    assert states.abs().max() <= 5.0 and states.shape == (1, 2, 30, 4)


def test_scan_together_equals_one_scan_per_gru_values_and_gradients():
    """GRUs of packs of two members: one loop for all members of GRUs of one size gives each
    member's own scan, and nothing crosses members."""
    torch.manual_seed(0)  # (the test's data)
    cells = [
        ClippedGRUCell(
            input_size=i, hidden_size=h, clip=5.0, generators=init_generators([k, k + 10])
        )
        for k, (i, h) in enumerate(((3, 4), (2, 4), (3, 6), (3, 4)))
    ]
    inputs = [
        torch.randn(2, 5, 9, 3),
        torch.randn(2, 5, 9, 2),
        torch.randn(2, 5, 9, 3),
        torch.randn(2, 5, 7, 3),
    ]
    h0s = [torch.randn(2, 5, c.hidden_size) for c in cells]

    def together():  # cells 0 and 1 share a loop; 2 and 3 run alone
        return scan_together(cells, inputs, h0s, loop=StackedGRUSequence.apply)

    def separate():
        return [
            scan_together([c], [x], [h], loop=StackedGRUSequence.apply)[0]
            for c, x, h in zip(cells, inputs, h0s)
        ]

    for a, b, reference in zip(together(), separate(), scan_reference(cells, inputs, h0s)):
        assert a.shape == reference.shape
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, reference)
    grads = [
        torch.autograd.grad(sum(s.square().sum() for s in states), cells[0].weight_hh)[0]
        for states in (together(), separate(), scan_reference(cells, inputs, h0s))
    ]
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])
    # member 1's states do not depend on member 0's weights
    (member_1,) = torch.autograd.grad(together()[0][1].square().sum(), cells[0].weight_hh)
    assert torch.equal(member_1[0], torch.zeros_like(member_1[0])) and member_1[1].abs().sum() > 0


def test_bidirectional_gru_backward_half_runs_in_reverse():
    torch.manual_seed(0)  # (the test's data)
    gru = BidirectionalGRU(input_size=3, hidden_size=4, clip=5.0, generators=init_generators([0]))

    def states(x):  # -> forward, backward (P, B, T, H) in the input's time
        return BidirectionalGRU.align(*FAST.scan_encoders(*map(list, zip(*gru.runs(x)))))

    x = torch.randn(1, 2, 7, 3)
    forward, backward = states(x)
    assert forward.shape == backward.shape == (1, 2, 7, 4)
    # the backward state at bin 0 has seen every bin: changing the last bin changes it, and
    # leaves the forward states before the last bin alone
    x2 = x.clone()
    x2[:, :, -1] += 1.0
    forward2, backward2 = states(x2)
    assert torch.equal(forward2[:, :, :-1], forward[:, :, :-1]) and not torch.allclose(
        backward2[:, :, 0], backward[:, :, 0]
    )


# -- encoders and decoder -------------------------------------------------------------------------
def test_encoder_shapes_std_floor_and_ci_lag():
    torch.manual_seed(0)  # (the test's data)
    settings = dict(
        input_dim=5,
        n_obs_bins=10,
        n_recon_bins=13,
        ic_enc_dim=6,
        ic_dim=4,
        ci_enc_dim=3,
        ci_lag=2,
        ic_enc_seq_len=0,
        use_controller=True,
        cell_clip=5.0,
        ic_post_var_min=0.01,
        loops=FAST,
    )
    enc = Encoder(**settings, dropout=[0.0], generators=init_generators([0]))
    x = torch.randn(1, 2, 10, 5)
    ic_mean, ic_std, ci = enc(x, MemberRandom([0]))
    assert ic_mean.shape == ic_std.shape == (1, 2, 4) and ci.shape == (1, 2, 13, 6)
    assert (ic_std >= 0.1 - 1e-6).all()  # sqrt(ic_post_var_min)
    # none over the forward-prediction bins
    assert torch.equal(ci[:, :, 10:], torch.zeros(1, 2, 3, 6))
    x2 = x.clone()
    x2[:, :, 5] += 3.0
    _, _, ci2 = enc(x2, MemberRandom([0]))
    changed = (ci2 != ci)[0].any(dim=0)  # (bins, 2C)
    forward_changed = changed[:, :3].any(dim=1).nonzero().flatten().tolist()
    backward_changed = changed[:, 3:].any(dim=1).nonzero().flatten().tolist()
    assert min(forward_changed) == 5 + 2  # forward half lagged by ci_lag
    assert max(backward_changed) == 5 - 2
    # a pack of two whose member 1 has dropout: member 0 gives what the encoder alone gives,
    # and member 1's dropout acts in training only
    pack = Encoder(**settings, dropout=[0.0, 0.5], generators=init_generators([0, 1]))
    trained = pack(torch.cat([x, x]), MemberRandom([0, 1]))
    for alone, packed in zip((ic_mean, ic_std, ci), trained):
        torch.testing.assert_close(packed[:1], alone)
    evaluated = pack.eval()(torch.cat([x, x]), MemberRandom([0, 1]))
    torch.testing.assert_close(evaluated[0][0], trained[0][0])
    assert not torch.allclose(evaluated[0][1], trained[0][1])


def test_encoder_ic_only_segment():
    torch.manual_seed(0)  # (the test's data)
    enc = Encoder(
        input_dim=5,
        n_obs_bins=10,
        n_recon_bins=12,
        ic_enc_dim=6,
        ic_dim=4,
        ci_enc_dim=3,
        ci_lag=1,
        ic_enc_seq_len=4,
        use_controller=True,
        dropout=[0.0],
        cell_clip=5.0,
        ic_post_var_min=1e-4,
        loops=FAST,
        generators=init_generators([0]),
    )
    random = MemberRandom([0])
    x = torch.randn(1, 2, 10, 5)
    _, _, ci = enc(x, random)
    assert ci.shape == (1, 2, 12, 6) and torch.equal(ci[:, :, :4], torch.zeros(1, 2, 4, 6))
    x2 = x.clone()
    x2[:, :, 6:] += 1.0
    ic_mean, _, _ = enc(x, random)
    ic_mean2, _, _ = enc(x2, random)
    torch.testing.assert_close(ic_mean, ic_mean2)  # the IC encoder sees only the first 4 bins


def test_decoder_shapes_factors_normalised_and_clipped():
    torch.manual_seed(0)  # (the test's data)
    dec = Decoder(
        ic_dim=4,
        gen_dim=9,
        fac_dim=3,
        con_dim=5,
        co_dim=2,
        ci_dim=6,
        ext_input_dim=1,
        use_controller=True,
        dropout=[0.0],
        cell_clip=0.5,
        loops=FAST,
        generators=init_generators([0]),
    )
    out = dec(
        torch.randn(1, 3, 4),
        torch.randn(1, 3, 11, 6),
        torch.randn(1, 3, 11, 1),
        MemberRandom([0]),
        co_prior=None,
    )
    assert out.gen_states.shape == (1, 3, 11, 9) and out.factors.shape == (1, 3, 11, 3)
    assert out.co_mean.shape == out.co_std.shape == (1, 3, 11, 2)
    assert dec.generator.input_size == 3  # u_t and the external input
    assert out.gen_states.abs().max() <= 0.5
    rows = torch.nn.functional.normalize(dec.factor_linear.weight, dim=2)  # (P, fac, gen)
    torch.testing.assert_close(out.factors, out.gen_states @ rows[0].T)


@pytest.mark.parametrize(
    "changes, ext",
    [
        ({}, 0),
        ({"co_dim": 0}, 0),  # autonomous
        ({"co_dim": 0}, 2),  # autonomous, driven by external inputs only
        ({}, 3),
        ({"variational": False, "ic_prior": "null", "co_prior": "null"}, 0),
        ({"reconstruction": "zero_inflated_gamma"}, 0),
    ],
)
def test_lfads_forward_shapes(changes, ext):
    """A pack of two members: every output (P, B, ...)."""
    hp = HParams.from_dict({**TINY_HPARAMS, **changes})
    dims = SessionDims(6, 2, 9, 3, ext)
    model = LFADS([hp, hp.replace(seed=1)], [dims])
    out = model({0: make_batch(dims, 4, members=2)}, sample_posteriors=True)[0]
    n_params = model.recons[0].n_params
    co = hp.co_dim
    assert out.params.shape == (2, 4, 12, 8, n_params)
    assert out.factors.shape == (2, 4, 12, hp.fac_dim)
    assert out.gen_states.shape == (2, 4, 12, hp.gen_dim)
    assert out.ic_mean.shape == out.ic_std.shape == (2, 4, hp.ic_dim)
    assert out.co_mean.shape == (2, 4, 12, co) and model.decoder.generator.input_size == co + ext
    assert model.rates(0, out).shape == (2, 4, 12, 8)


def test_non_variational_is_deterministic():
    hp = HParams.from_dict(
        {
            **TINY_HPARAMS,
            "variational": False,
            "ic_prior": "null",
            "co_prior": "null",
            "dropout": 0.0,
        }
    )
    dims = SessionDims(6, 2, 9, 3)
    model = LFADS(hp, [dims])
    batch = {0: make_batch(dims, 3)}
    torch.testing.assert_close(model(batch, True)[0].params, model(batch, True)[0].params)


def test_posterior_average_equals_mean_of_repeated_trials():
    dims = SessionDims(6, 2, 9, 3)
    hp = HParams.from_dict(TINY_HPARAMS)
    model = LFADS(hp, [dims]).eval()
    batch = make_batch(dims, 4)
    model.random = MemberRandom([1])
    averaged = model.posterior_average({0: batch}, n_samples=5)[0]
    repeated = SessionBatch(
        batch.encod_data.repeat(1, 5, 1, 1),
        batch.recon_data.repeat(1, 5, 1, 1),
        batch.ext_input.repeat(1, 5, 1, 1),
    )
    model.random = MemberRandom([1])
    with torch.no_grad():
        out = model({0: repeated}, sample_posteriors=True)[0]
    rates = model.rates(0, out).reshape(1, 5, 4, 12, 8)
    torch.testing.assert_close(averaged["rates"], rates.mean(1))
    gen_dim = TINY_HPARAMS["gen_dim"]
    torch.testing.assert_close(
        averaged["gen_states"], out.gen_states.reshape(1, 5, 4, 12, gen_dim).mean(1)
    )
    torch.testing.assert_close(averaged["ic_mean"], out.ic_mean[:, :4])
    samples_differ = rates.std(1).mean()
    assert samples_differ > 1e-4  # they really are different samples
    # member 0 of a pack, with the same stream, averages the same samples
    pack = LFADS([hp, hp.replace(seed=7)], [dims]).eval()
    pack.random = MemberRandom([1, 2])
    packed = pack.posterior_average({0: make_batch(dims, 4, members=2)}, n_samples=5)[0]
    for name, value in averaged.items():
        torch.testing.assert_close(packed[name][:1], value, msg=name)


def test_posterior_average_of_an_autonomous_model_has_empty_inputs():
    """co_dim 0: the inferred-input outputs are (P, B, T + F, 0), and averaging them must not
    fail."""
    dims = SessionDims(6, 2, 9, 3)
    model = LFADS(HParams.from_dict({**TINY_HPARAMS, "co_dim": 0}), [dims]).eval()
    averaged = model.posterior_average({0: make_batch(dims, 4)}, n_samples=3)[0]
    assert averaged["co_mean"].shape == averaged["co_std"].shape == (1, 4, 12, 0)
    assert averaged["rates"].shape == (1, 4, 12, 8) and torch.isfinite(averaged["rates"]).all()


def test_sample_major_rows():
    # two sessions of 2 and 1 trials, 2 samples: x.repeat gives [a0 a1 b0 | a0 a1 b0]
    assert _sample_major_rows([2, 1], 2, torch.device("cpu")).tolist() == [0, 1, 3, 4, 2, 5]


# -- priors ---------------------------------------------------------------------------------
def test_multivariate_normal_kl_matches_monte_carlo():
    """A pack of two members, each with its own prior mean and variance: each member's KL."""
    torch.manual_seed(0)  # (the test's data and Monte Carlo samples)
    settings = ((0.2, 0.1), (-0.1, 0.3))  # (mean, variance) of each member
    prior = MultivariateNormalPrior(dim=3, n_members=2, mean=0.2, variance=0.1)
    with torch.no_grad():
        prior.mean[1], prior.logvar[1] = settings[1][0], math.log(settings[1][1])
    mean, std = torch.randn(2, 4, 3) * 0.3, torch.rand(2, 4, 3) * 0.3 + 0.1
    analytic = prior(mean, std, MemberRandom([0, 1]))
    assert analytic.shape == (2,)
    for m, (prior_mean, variance) in enumerate(settings):
        q = Normal(mean[m], std[m])
        u = q.sample((200_000,))
        p = Normal(torch.full((3,), prior_mean), math.sqrt(variance))
        monte_carlo = (q.log_prob(u) - p.log_prob(u)).sum(-1).mean()
        assert abs(analytic[m].item() - monte_carlo.item()) < 0.01 * abs(analytic[m].item())


def test_autoregressive_prior_is_an_ar1_gaussian_and_its_kl_estimate_is_unbiased():
    """A pack of two members, each with its own tau and noise variance."""
    torch.manual_seed(0)  # (the test's data)
    settings = ((4.0, 0.3), (2.0, 0.5))  # (tau, noise_variance) of each member
    prior = AutoregressiveNormalPrior(dim=2, n_members=2, tau=4.0, noise_variance=0.3)
    with torch.no_grad():
        prior.log_tau[1], prior.log_noise_variance[1] = map(math.log, settings[1])
    n_bins = 6
    u = torch.randn(2, 5, n_bins, 2)
    lags = torch.arange(n_bins)
    mvns = []
    for tau, noise_variance in settings:
        alpha = math.exp(-1 / tau)
        distance = (lags[:, None] - lags[None, :]).abs().double()
        covariance = noise_variance / (1 - alpha**2) * alpha**distance
        mvns.append(MultivariateNormal(torch.zeros(n_bins, dtype=torch.float64), covariance))
    expected = torch.stack(  # independent dimensions
        [mvn.log_prob(u[m].double().transpose(1, 2)).sum(-1) for m, mvn in enumerate(mvns)]
    )
    torch.testing.assert_close(prior.log_prob(u).double(), expected, rtol=1e-5, atol=1e-5)
    # one-sample KL estimate, averaged, against the exact Gaussian KL
    mean, std = torch.randn(2, 1, n_bins, 2) * 0.5, torch.rand(2, 1, n_bins, 2) * 0.5 + 0.2
    random = MemberRandom([0, 1])
    estimate = torch.stack(
        [
            prior(mean.expand(-1, 2000, -1, -1), std.expand(-1, 2000, -1, -1), random)
            for _ in range(10)
        ]
    ).mean(0)
    for m, mvn in enumerate(mvns):
        exact = sum(
            torch.distributions.kl_divergence(
                MultivariateNormal(
                    mean[m, 0, :, d].double(), torch.diag(std[m, 0, :, d].double() ** 2)
                ),
                mvn,
            )
            for d in range(2)
        )
        assert abs(estimate[m].item() - exact.item()) < 0.02 * exact.item(), m


@pytest.mark.parametrize(
    "prior",
    [
        MultivariateStudentTPrior(dim=3, loc=0.0, scale=0.5, df=4),
        MultivariateNormalPrior(dim=3, mean=0.0, variance=0.25),
        AutoregressiveNormalPrior(dim=3, tau=1e-9, noise_variance=0.25),
    ],
)
def test_kl_is_zero_when_posterior_equals_prior(prior):
    mean, std = torch.zeros(1, 6, 3), torch.full((1, 6, 3), 0.5)
    if isinstance(prior, AutoregressiveNormalPrior):  # tau -> 0: independent bins
        mean, std = torch.zeros(1, 6, 4, 3), torch.full((1, 6, 4, 3), 0.5)
    kl = prior(mean, std, MemberRandom([0]))
    assert kl.shape == (1,) and abs(kl.item()) < 1e-5


def test_student_t_samples_are_heavy_tailed_and_null_prior_passes_the_mean():
    prior = MultivariateStudentTPrior(dim=1, df=3.0)
    global_state = torch.get_rng_state()
    samples = prior.sample(torch.zeros(1, 200_000, 1), torch.ones(1, 200_000, 1), MemberRandom([0]))
    assert (samples.abs() > 5).float().mean() > 0.005  # Normal: 6e-7
    # the draws (the chi2 ones too) are the member's stream's: torch's global generator is left
    # as it was, and member 0 of a pack draws what a pack of one draws
    assert torch.equal(torch.get_rng_state(), global_state)
    pack = MultivariateStudentTPrior(dim=1, n_members=2, df=3.0)
    packed = pack.sample(
        torch.zeros(2, 200_000, 1), torch.ones(2, 200_000, 1), MemberRandom([0, 1])
    )
    assert torch.equal(packed[:1], samples) and not torch.equal(packed[1], samples[0])
    # loc from loc, not scale
    assert torch.allclose(
        MultivariateStudentTPrior(dim=2, loc=0.3, scale=2.0).loc, torch.tensor([[0.3, 0.3]])
    )
    null = NullPrior(dim=2)
    mean = torch.randn(1, 3, 2)
    random = MemberRandom([0])
    assert torch.equal(null.sample(mean, torch.ones(1, 3, 2), random), mean)
    assert torch.equal(null(mean, mean, random), torch.zeros(1))


# -- reconstructions -------------------------------------------------------------------------
def test_reconstruction_losses_equal_torch_distributions():
    torch.manual_seed(0)  # (the test's data)
    counts = torch.poisson(torch.full((1, 2, 5, 3), 2.0))  # (P, B, T, H)
    positive = torch.rand(1, 2, 5, 3) + 0.2
    log_rate = torch.randn(1, 2, 5, 3, 1)
    torch.testing.assert_close(
        PoissonRecon(n_neurons=3).compute_loss(counts, log_rate),
        -Poisson(log_rate[..., 0].exp()).log_prob(counts),
    )
    params = torch.randn(1, 2, 5, 3, 2)
    torch.testing.assert_close(
        Gaussian(n_neurons=3).compute_loss(positive, params),
        -Normal(params[..., 0], params[..., 1].mul(0.5).exp()).log_prob(positive),
    )
    torch.testing.assert_close(
        GammaRecon(n_neurons=3).compute_loss(positive, params),
        -Gamma(params[..., 0].exp(), params[..., 1].exp()).log_prob(positive),
    )
    torch.testing.assert_close(
        MSE(n_neurons=3).compute_loss(positive, params[..., :1]),
        -Normal(params[..., 0], math.sqrt(0.5)).log_prob(positive) - 0.5 * math.log(math.pi),
    )
    # zero-inflated gamma, a pack of two whose member 1 has scales 10: each member's own scales
    zig = ZeroInflatedGamma(n_neurons=3, n_members=2, gamma_loc=0.1, scale_init=20.0)
    assert zig.scale.shape == (2, 2, 3)
    with torch.no_grad():
        zig.scale[1] = 10.0
    data = torch.where(torch.rand(1, 2, 5, 3) < 0.4, torch.zeros(1, 2, 5, 3), positive)
    zparams = torch.randn(1, 2, 5, 3, 3)
    unit = torch.sigmoid(zparams)
    losses = zig.compute_loss(data.expand(2, -1, -1, -1), zparams.expand(2, -1, -1, -1, -1))
    means = zig.compute_means(zparams.expand(2, -1, -1, -1, -1))
    for m, scale in enumerate((20.0, 10.0)):
        alpha, beta, q = unit[0, ..., 0] * scale, unit[0, ..., 1] * scale, unit[0, ..., 2]
        gamma = Gamma(alpha, beta)
        shifted = torch.where(data[0] == 0, torch.ones_like(data[0]), data[0] - 0.1)
        expected = torch.where(
            data[0] == 0, -torch.log(1 - q), -torch.log(q) - gamma.log_prob(shifted)
        )
        torch.testing.assert_close(losses[m], expected)
        torch.testing.assert_close(means[m], q * (alpha / beta + 0.1))
    # the scales' L2 pull toward scale_prior 20, per member: 0.5 * 1e-4 * (2 x 3 neurons) * 10^2
    torch.testing.assert_close(zig.penalty(), torch.tensor([0.0, 0.5 * 1e-4 * 6 * 100]))


def test_reshape_output_params_blocks():
    recon = Gaussian(n_neurons=4)
    out = torch.arange(8.0).reshape(1, 1, 1, 8)
    params = recon.reshape_output_params(out)
    assert params.shape == (1, 1, 1, 4, 2) and params[0, 0, 0, :, 0].tolist() == [0, 1, 2, 3]


# -- augmentations -------------------------------------------------------------------------------
# Augmentations see one member's batch (B, ...) and draw from that member's generator.
def test_coordinated_dropout_gradients_flow_only_through_masked_elements():
    dims = SessionDims(5, 2, 8, 2)
    batch = make_batch(dims, 6).member(0)
    cd = CoordinatedDropout(rate=0.4)
    dropped, grad_mask = cd.process_batch(batch, torch.Generator().manual_seed(0))
    kept = dropped.encod_data != 0
    nonzero_input = batch.encod_data != 0
    # kept inputs are scaled by 1/(1 - rate), masked ones zeroed
    torch.testing.assert_close(dropped.encod_data[kept], batch.encod_data[kept] / 0.6)
    assert torch.equal(
        (grad_mask == 1)[nonzero_input], ~kept[nonzero_input]
    )  # gradient where input was masked
    predictions = torch.randn(6, 10, 7, generator=torch.Generator().manual_seed(1))
    predictions.requires_grad_(True)
    losses = (predictions - batch.recon_data) ** 2
    total = cd.process_losses(losses, dropped, grad_mask, {})
    torch.testing.assert_close(total, losses)  # values unchanged
    total.sum().backward()
    grad = predictions.grad
    observed = grad[:, :8, :5]
    assert (observed[grad_mask == 0] == 0).all() and (
        observed[grad_mask == 1] != 0
    ).float().mean() > 0.9
    assert (grad[:, 8:] != 0).float().mean() > 0.9 and (grad[:, :, 5:] != 0).float().mean() > 0.9
    assert (
        abs((grad_mask == 0).float().mean().item() - 0.6) < 0.1
    )  # kept (no gradient) fraction 1 - rate


def test_selective_backprop_masks_nan_targets():
    dims = SessionDims(3, 1, 4, 1)
    batch = make_batch(dims, 2).member(0)
    recon = batch.recon_data.clone()
    recon[0, 1, 2] = recon[1, 3, :] = float("nan")
    batch = batch.replace(recon_data=recon)
    sbtt = SelectiveBackprop()
    filled, missing = sbtt.process_batch(batch, torch.Generator())
    assert not torch.isnan(filled.recon_data).any() and missing.sum() == 5
    log_rate = torch.zeros(2, 5, 4, 1, requires_grad=True)
    losses = PoissonRecon(n_neurons=4).compute_loss(filled.recon_data, log_rate)
    out = sbtt.process_losses(losses, filled, missing, {})
    out.mean().backward()
    assert (out[missing] == 0).all() and (log_rate.grad[..., 0][missing] == 0).all()
    expected = losses.detach()[~missing].sum() / losses.numel() / (1 - 5 / 40)
    torch.testing.assert_close(out.mean().detach(), expected)


def test_sample_validation_holds_elements_out_and_scores_them():
    dims = SessionDims(4, 1, 5, 1)
    batch = make_batch(dims, 3).member(0)
    mask = (torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    batch = batch.replace(sv_mask=mask)
    sv = SampleValidation(rate=0.3)
    processed, memo = sv.process_batch(batch, torch.Generator())
    torch.testing.assert_close(processed.encod_data, batch.encod_data * mask / 0.7)
    losses = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(3))
    metrics = {}
    out = sv.process_losses(losses, processed, memo, metrics)
    assert (out[:, :5, :4][mask == 0] == 0).all()
    held_out = losses[:, :5, :4][mask == 0].mean()
    torch.testing.assert_close(metrics["recon_sv"], held_out)
    # a pack of two members holding out complementary elements: each member's recon_sv, (P,)
    members = MemberAugmentations([AugmentationStack([sv]), AugmentationStack([sv])])
    pack = SessionBatch.stack([batch, batch.replace(sv_mask=1.0 - mask)])
    processed, memos = members.process_batch(pack, MemberRandom([0, 1]))
    metrics = {}
    members.process_losses(torch.stack([losses, losses]), processed, memos, metrics)
    other = losses[:, :5, :4][mask == 1].mean()
    torch.testing.assert_close(metrics["recon_sv"], torch.stack([held_out, other]))


def test_temporal_shift_and_spike_jitter():
    dims = SessionDims(30, 0, 20, 0)
    batch = make_batch(dims, 8).member(0)
    generator = torch.Generator().manual_seed(0)
    shifted, _ = TemporalShift(std=3.0, max_shift=2).process_batch(batch, generator)
    assert shifted.encod_data.shape == batch.encod_data.shape
    # every channel is its own time series moved by at most 2 bins (edges repeated)
    x, y = batch.encod_data, shifted.encod_data
    matches = [
        any(torch.equal(y[b, 2:-2, n], x[b, 2 - s : 18 - s, n]) for s in range(-2, 3))
        for b in range(8)
        for n in range(30)
    ]
    assert all(matches) and not torch.equal(x, y)
    jittered, _ = SpikeJitter(width=2).process_batch(batch, generator)
    assert torch.equal(
        jittered.encod_data.sum(dim=1), batch.encod_data.sum(dim=1)
    )  # spikes kept per channel
    assert not torch.equal(jittered.encod_data, batch.encod_data)


def test_augmentation_stack_applies_in_order():
    dims = SessionDims(3, 1, 4, 1)
    batch = make_batch(dims, 2).member(0)
    recon = batch.recon_data.clone()
    recon[0, 0, 0] = float("nan")
    batch = batch.replace(recon_data=recon)
    stack = AugmentationStack([SelectiveBackprop(), CoordinatedDropout(rate=0.5)])
    processed, memos = stack.process_batch(batch, MemberRandom([0]).generators("cpu")[0])
    assert len(memos) == 2 and not torch.isnan(processed.recon_data).any()
    losses = stack.process_losses(torch.ones(2, 5, 4), processed, memos, {})
    assert losses[0, 0, 0] == 0
    # a pack of two members with their own stacks: member 0's rows get what its stack alone
    # gives them with its own stream
    members = MemberAugmentations([stack, AugmentationStack([CoordinatedDropout(rate=0.2)])])
    packed, packed_memos = members.process_batch(
        SessionBatch.stack([batch, batch]), MemberRandom([0, 1])
    )
    assert torch.equal(packed.member(0).encod_data, processed.encod_data)
    assert torch.equal(packed.member(0).recon_data, processed.recon_data)
    assert torch.isnan(packed.recon_data[1, 0, 0, 0])  # member 1 has no selective backprop
    packed_losses = members.process_losses(torch.ones(2, 2, 5, 4), packed, packed_memos, {})
    assert torch.equal(packed_losses[0], losses)


# -- loss pieces ----------------------------------------------------------------------------
def test_ramps():
    assert [ramp(e, 0, 3) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [ramp(e, 2, 1) for e in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert ramp(0, 0, 0) == 1.0


def test_loss_combines_terms_with_ramps_and_scales():
    """A pack of two members with their own KL and L2 scales (and dropout): each member's terms;
    member 0's are those of the model alone."""
    hp = HParams.from_dict(
        {
            **TINY_HPARAMS,
            "l2_gen_scale": 0.5,
            "l2_con_scale": 0.25,
            "kl_ic_scale": 1e-3,
            "kl_co_scale": 2e-3,
            "kl_increase_epoch": 3,
            "l2_increase_epoch": 1,
            "loss_scale": 10.0,
            "train_augmentations": [],
        }
    )
    other = hp.replace(
        seed=1, dropout=0.3, l2_gen_scale=0.1, l2_con_scale=0.0, kl_ic_scale=1e-2, kl_co_scale=0.0
    )
    dims = SessionDims(6, 2, 9, 3)
    model = LFADS([hp, other], [dims])
    batch = {0: make_batch(dims, 4, members=2)}
    outputs = model(batch, sample_posteriors=True)
    no_memos = {0: [[], []]}
    terms = model.loss(batch, outputs, model.train_augmentations, no_memos, epoch=1, metrics={})
    out = outputs[0]
    recon = PoissonRecon(n_neurons=8).compute_loss(batch[0].recon_data, out.params)
    gen, con = model.decoder.generator.weight_hh, model.decoder.controller.weight_hh
    gen_squares, con_squares = 0.5 * gen.pow(2).sum(dim=(1, 2)), 0.5 * con.pow(2).sum(dim=(1, 2))
    l2 = torch.stack(
        [
            (0.5 * gen_squares[0] + 0.25 * con_squares[0]) / (gen[0].numel() + con[0].numel()),
            0.1 * gen_squares[1] / gen[1].numel(),  # a matrix of scale 0 is not counted
        ]
    )
    assert terms.loss.shape == (2,)
    torch.testing.assert_close(terms.recon, recon.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(terms.l2, l2)
    kl_ic = model.ic_prior(out.ic_mean, out.ic_std, model.random)  # analytic: draws nothing
    torch.testing.assert_close(terms.kl_ic, torch.tensor([1e-3, 1e-2]) * kl_ic)
    assert terms.kl_co[1] == 0 and terms.kl_co[0] != 0
    assert terms.kl_ramp == 0.5 and terms.l2_ramp == 1.0
    expected = 10.0 * (terms.recon + 1.0 * terms.l2 + 0.5 * (terms.kl_ic + terms.kl_co))
    torch.testing.assert_close(terms.loss, expected)
    # member 0 alone: the same weights, the same draws, the same terms
    alone = LFADS(hp, [dims])
    single = {0: make_batch(dims, 4)}
    alone_outputs = alone(single, sample_posteriors=True)
    alone_terms = alone.loss(
        single, alone_outputs, alone.train_augmentations, {0: [[]]}, epoch=1, metrics={}
    )
    for name in ("loss", "recon", "kl_ic", "kl_co", "l2"):
        torch.testing.assert_close(getattr(terms, name)[:1], getattr(alone_terms, name), msg=name)


# -- metrics and PCR ------------------------------------------------------------------------
def test_bits_per_spike_matches_nlb_formula_over_batches():
    """A pack of two members with their own rates and spikes: each member's value."""
    rng = np.random.default_rng(0)
    rates = rng.gamma(2.0, 0.5, (2, 10, 6, 4))  # (P, B, T, N)
    spikes = rng.poisson(rates).astype(float)
    spikes[0, 0, 0, 0] = spikes[1, 3, 2, 1] = np.nan
    metric = BitsPerSpike()
    for part in (slice(0, 3), slice(3, 10)):
        metric.update(torch.tensor(rates[:, part]), torch.tensor(spikes[:, part]))
    from scipy.special import gammaln

    def nll(r, k):
        return np.nansum(r - k * np.log(r) + gammaln(k + 1) + 0 * k)

    values = metric.compute(2)
    assert len(values) == 2
    for value, member_rates, member_spikes in zip(values, rates, spikes):
        mean = np.nanmean(member_spikes, axis=(0, 1), keepdims=True) * np.ones_like(member_spikes)
        expected = (
            (nll(mean, member_spikes) - nll(member_rates, member_spikes))
            / np.nansum(member_spikes)
            / np.log(2)
        )
        assert abs(value - expected) < 1e-9


def test_rate_r2():
    """A pack of two members: each member's R^2."""
    truth = torch.rand(5, 4, 3, generator=torch.Generator().manual_seed(0))
    predictions = [truth * 0.5 + 0.1, truth * 0.8 - 0.05]
    metric = RateR2()
    metric.update(torch.stack(predictions), torch.stack([truth, truth]))
    from sklearn.metrics import r2_score

    values = metric.compute(2)
    assert len(values) == 2
    for value, predicted in zip(values, predictions):
        expected = r2_score(truth.reshape(-1, 3).numpy(), predicted.reshape(-1, 3).numpy())
        assert abs(value - expected) < 1e-6


def test_pcr_readins_align_sessions_seeing_the_same_latents():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(60, 3))  # rows: condition x time averages
    sessions = [latents @ rng.normal(size=(3, n)) + rng.uniform(1, 2, n) for n in (12, 7)]
    readins = pcr_readins(sessions, readin_dim=5)
    projected = [avg @ w.T + b for avg, (w, b) in zip(sessions, readins)]
    assert [w.shape for w, _ in readins] == [(5, 12), (5, 7)]
    # the 3 real components come out the same from both sessions (the 2 spare rows are random)
    np.testing.assert_allclose(projected[0][:, :3], projected[1][:, :3], atol=0.02)
    assert abs(projected[0][:, :3].mean()) < 1e-6


@pytest.mark.parametrize(
    "settings, n_sessions, ext_input_dim",
    [({}, 1, 0), ({"co_dim": 0, "readin_dim": 24}, 2, 3)],
    ids=["controller", "no controller, readins, external inputs"],
)
def test_forward_flops_are_a_third_of_the_counted_matmuls_of_a_step(
    settings, n_sessions, ext_input_dim
):
    """A training step's matmuls, forward and backward, counted by torch: 3x model.forward_flops
    per trial (each backward computes two products of its forward's size)."""
    from torch.utils.flop_counter import FlopCounterMode

    from lfads.training.step import run_step

    hp = HParams.from_dict({"batch_size": 8, **settings})  # the rest: the mc_maze sizes
    sessions = [SessionDims(40 + s, 10, 12, 3, ext_input_dim) for s in range(n_sessions)]
    model = LFADS(hp, sessions, rnn_impl="reference")
    assert model.use_controller == (hp.co_dim > 0)
    for session, dims in enumerate(sessions):
        with FlopCounterMode(display=False) as counter:
            step = run_step(model, {session: make_batch(dims, 8)}, epoch=0, training=False)
            step.terms.loss.sum().backward()
        assert math.isclose(
            3 * 8 * sum(model.forward_flops(session)), counter.get_total_flops(), rel_tol=0.03
        ), session


def test_the_activation_budget_of_a_row_covers_what_sampling_keeps_of_it():
    """Per (sample x trial) row and bin, posterior sampling keeps at least the readout's
    parameters, the factors, generator states, controller outputs and the controller's input:
    activation_floats_per_bin, which sizes infer's batches, counts no less."""
    hp = HParams.from_dict(TINY_HPARAMS)
    sessions = [SessionDims(6, 2, 5, 2), SessionDims(9, 3, 5, 2)]
    model = LFADS(hp, sessions).eval()
    with torch.no_grad():
        outputs = model({s: make_batch(dims, 4) for s, dims in enumerate(sessions)})
    for session, out in outputs.items():
        kept = out.params.shape[-1] * out.params.shape[-2] + out.factors.shape[-1]
        kept += out.gen_states.shape[-1] + out.co_mean.shape[-1] + out.co_std.shape[-1]
        kept += 2 * hp.ci_enc_dim
        assert kept <= model.activation_floats_per_bin() < 3 * kept, session
