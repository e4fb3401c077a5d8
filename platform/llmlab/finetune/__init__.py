"""Fine-tuning a trained decoder: full, LoRA, P-tuning, prefix and prompt tuning (PEFT), and
bottleneck adapters (ours). `config` is the `finetune` section; `methods` applies a method to a
model; `base` is the driver's side (adopting the base model, exporting the adapter)."""
