"""How the trainer validates its epochs: a BN-fused copy of the EMA (val.py's function), in the training precision,
with SiLU in place (no autograd); best.pt's final validation fused, in float32."""
from types import SimpleNamespace

import pytest
import torch

from tests.engine.test_train import tiny_run
from utils.engine import options
from utils.engine import trainer as trainer_module


@pytest.mark.parametrize('bf16_unit', ['AVX-512 BF16', None])
def test_epoch_validation_follows_the_training_precision(monkeypatch, tmp_path, bf16_unit):
    """A run training under bf16 validates its epochs under bf16 (YOLOv5 validates in fp16 under CUDA AMP) and best.pt
    in float32, so the final numbers are val.py's; a float32 run validates in float32 throughout."""
    from utils.core import precision
    monkeypatch.setattr(precision, 'cpu_bf16_unit', lambda: bf16_unit)
    seen = []
    monkeypatch.setattr(trainer_module, 'Evaluator', lambda names, o, **kw: seen.append(o.bf16) or o)
    monkeypatch.setattr(trainer_module, 'validate', lambda model, loader, evaluator: evaluator)
    trainer = trainer_module.Trainer(options.TrainOptions(), torch.device('cpu'))
    trainer.data, trainer.names, trainer.compute_loss, trainer.save_dir = {}, {0: 'a'}, None, tmp_path
    trainer.val_loader = SimpleNamespace(dataset=None)
    trainer.validate(None)
    trainer.validate(None, final=True)
    assert seen == ([True, False] if bf16_unit else [False, False])


def test_training_runs_silu_out_of_place_and_validation_in_place(data, tmp_path, monkeypatch):
    """In place, SiLU makes autograd copy its input (one more memory pass per call): the trained model
    runs it out of place, the EMA that validates without autograd keeps it in place."""
    seen = {}

    def capture(self, epoch):
        seen['model'], seen['ema'] = self.model, self.ema.ema
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, 'train_one_epoch', capture)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data, tmp_path)
    silu = [[m.inplace for m in seen[k].modules() if isinstance(m, torch.nn.SiLU)] for k in ('model', 'ema')]
    assert len(silu[0]) == 57 and not any(silu[0]) and all(silu[1])


def test_epochs_are_validated_with_a_fused_copy_of_the_ema(data, tmp_path, monkeypatch):
    """Each epoch validates a BN-fused copy of the EMA (EfficientViT's fast path, as val.py runs last.pt), computing
    the EMA's function; the EMA itself stays unfused for training, and best.pt's final validation is fused too."""
    make_copy, real_validate = trainer_module.Trainer.validation_model, trainer_module.validate
    copies, validated = [], []

    def n_bn(model):
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())

    def checked_copy(self):
        fused, x = make_copy(self), torch.rand(2, 3, 64, 96)
        with torch.no_grad():
            torch.testing.assert_close(fused(x)[0], self.ema.ema(x)[0], rtol=1e-4, atol=1e-3)
        copies.append((n_bn(fused), n_bn(self.ema.ema), fused.model[0].fast, self.ema.ema.model[0].fast))
        return fused

    def recorded_validate(model, loader, evaluator):
        validated.append(n_bn(model))
        return real_validate(model, loader, evaluator)

    monkeypatch.setattr(trainer_module.Trainer, 'validation_model', checked_copy)
    monkeypatch.setattr(trainer_module, 'validate', recorded_validate)
    tiny_run(data, tmp_path, cfg='models/yolov5-efficientvit.yaml', epochs=2)
    assert copies == [(0, 138, True, False)] * 2  # M0 detector: 138 BatchNorms (backbone and head)
    assert validated == [0, 0, 0]  # epochs 0 and 1, then best.pt
