"""Recipes on the one Trainer (training/trainer.py), each read top to bottom: supervised training
(train.py), self-supervised pretraining (pretrain.py), and starting from an earlier run (transfer.py).
Pruning's fine-tune (serving/prune.py) runs on the same Trainer."""
