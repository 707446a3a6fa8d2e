"""The published nets for 64×64 images (models/nets64.py): their shapes, their parameter counts
computed here from the references' layer sizes, the sizes and widths they refuse, one training step
of a VAE with each, and model.net=<net> through the config check."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from torch import nn

from conftest import REPO
from vaelab.config import check_train_config
from vaelab.errors import ConfigError
from vaelab.models import AE, VAE, build_model

DSPRITES = (1, 64, 64)
LATENT = 10


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, kernel: int) -> int:
    return c_in * c_out * kernel * kernel + c_out


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# disentanglement_lib architectures.py: conv_encoder (e1–e5) and deconv_decoder (d1–d6), C channels.
def conv64_encoder(c: int) -> int:
    return conv(c, 32, 4) + conv(32, 32, 4) + conv(32, 64, 2) + conv(64, 64, 2) + dense(4 * 4 * 64, 256)


def conv64_decoder(c: int, latent: int) -> int:
    return (dense(latent, 256) + dense(256, 1024)
            + conv(64, 64, 4) + conv(64, 32, 4) + conv(32, 32, 4) + conv(32, c, 4))


# fc_encoder / fc_decoder (rtqichen/beta-tcvae vae_quant.py MLPEncoder / MLPDecoder): 4096 = 64·64 pixels.
def mlp1200_encoder(pixels: int) -> int:
    return dense(pixels, 1200) + dense(1200, 1200)


def mlp1200_decoder(pixels: int, latent: int) -> int:
    return dense(latent, 1200) + 2 * dense(1200, 1200) + dense(1200, pixels)


@pytest.mark.parametrize("channels", [1, 3])
def test_conv64_has_the_reference_sizes_and_parameter_count(channels):
    torch.manual_seed(0)
    model = VAE(image_shape=(channels, 64, 64), latent_dim=LATENT, net="conv64")
    x = torch.rand(2, channels, 64, 64)
    sides = [h.shape[-1] for h in _outputs(model.encoder.net, x, nn.Conv2d)]
    assert sides == [32, 16, 8, 4]
    assert [m.kernel_size for m in model.encoder.net if isinstance(m, nn.Conv2d)] == [(4, 4), (4, 4), (2, 2), (2, 2)]
    assert model.encoder(x).shape == (2, 256) and model.encoder.out_features == 256
    z = torch.randn(2, LATENT)
    assert [h.shape[-1] for h in _outputs(model.decoder.net, model.decoder.fc(z).view(-1, 64, 4, 4),
                                          nn.ConvTranspose2d)] == [8, 16, 32, 64]
    assert model.decode(z).shape == (2, channels, 64, 64) and model(x).logits.shape == x.shape
    assert n_parameters(model.encoder) == conv64_encoder(channels)
    assert n_parameters(model.decoder) == conv64_decoder(channels, LATENT)
    heads = 2 * dense(256, LATENT)  # fc_mu, fc_var: disentanglement_lib's "means" and "log_var"
    assert n_parameters(model) == conv64_encoder(channels) + heads + conv64_decoder(channels, LATENT)
    # Logits: no ReLU after the last transposed convolution (they would be ≥ 0).
    assert isinstance(model.decoder.net[-1], nn.ConvTranspose2d)


def test_mlp1200_is_the_beta_vae_mlp_with_a_tanh_decoder():
    torch.manual_seed(0)
    model = VAE(image_shape=DSPRITES, latent_dim=LATENT, net="mlp1200")
    assert n_parameters(model.encoder) == mlp1200_encoder(4096)
    assert n_parameters(model.decoder) == mlp1200_decoder(4096, LATENT)
    assert n_parameters(model) == mlp1200_encoder(4096) + 2 * dense(1200, LATENT) + mlp1200_decoder(4096, LATENT)
    activations = [type(m) for m in model.decoder.modules() if isinstance(m, (nn.ReLU, nn.Tanh))]
    assert activations == [nn.Tanh] * 3
    assert [type(m) for m in model.encoder.modules() if isinstance(m, (nn.ReLU, nn.Tanh))] == [nn.ReLU] * 2
    x = torch.rand(2, *DSPRITES)
    assert model.encoder(x).shape == (2, 1200) and model(x).logits.shape == x.shape
    # The plain mlp with the same widths differs only in its decoder: two ReLU layers, not three tanh ones.
    plain = VAE(image_shape=DSPRITES, latent_dim=LATENT, net="mlp", hidden_dims=[1200, 1200])
    assert n_parameters(plain.encoder) == n_parameters(model.encoder)
    assert n_parameters(model.decoder) - n_parameters(plain.decoder) == dense(1200, 1200)


def test_mlp1200_flattens_other_image_sizes():
    model = AE(image_shape=(3, 20, 12), latent_dim=3, net="mlp1200")
    x = torch.rand(2, 3, 20, 12)
    assert model(x).logits.shape == x.shape
    assert n_parameters(model.decoder) == mlp1200_decoder(3 * 20 * 12, 3)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 64, 32)])
def test_conv64_refuses_other_sizes_in_one_line(shape):
    with pytest.raises(ConfigError) as refused:
        build_model("vae", shape, net="conv64")
    _, h, w = shape
    assert str(refused.value) == (f"model.net=conv64 takes 64×64 images (data=dsprites), not {h}×{w}; "
                                  f"for other sizes use model.net=conv")


@pytest.mark.parametrize("net", ["conv64", "mlp1200"])
def test_the_published_nets_refuse_other_widths(net):
    with pytest.raises(ConfigError, match=rf"^model.net={net} is a published architecture of fixed widths "
                                          r".*model.hidden_dims must be null, not \[16, 16\]; "):
        build_model("ae", DSPRITES, net=net, hidden_dims=[16, 16])


@pytest.mark.parametrize("net", ["conv64", "mlp1200"])
def test_a_vae_with_the_net_trains_one_step_on_binary_images(net):
    torch.manual_seed(0)
    model = build_model("vae", DSPRITES, net=net, latent_dim=LATENT, recon_loss="bce")
    x = (torch.rand(8, *DSPRITES) < 0.1).float()  # dSprites: binary pixels, mostly black
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = model.losses(x, torch.zeros(8, LATENT))
    before["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimiser.step()
    with torch.no_grad():
        after = model.losses(x, torch.zeros(8, LATENT))
    assert torch.isfinite(after["loss"]) and after["loss"] < before["loss"]


@pytest.mark.parametrize("net", ["conv64", "mlp1200"])
def test_model_net_composes_and_passes_the_config_check(net):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model.net={net}", "model.recon_loss=bce"])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    check_train_config(cfg)
    assert cfg.model.net == net and cfg.model.hidden_dims is None


def _outputs(layers: nn.Sequential, x: torch.Tensor, kind: type[nn.Module]) -> list[torch.Tensor]:
    """The output of each layer of `kind` in `layers`, run on `x`."""
    seen = []
    for layer in layers:
        x = layer(x)
        if isinstance(layer, kind):
            seen.append(x)
    return seen
