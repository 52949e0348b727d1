#!/usr/bin/env bash
# The GPU check: the paper-scale code paths that the CPU cannot exercise, in a few minutes on one GPU.
#   bash bench/gpu_check.sh          one CUDA GPU: torchrun + NCCL, bf16 autocast, channels-last
#   bash bench/gpu_check.sh --cpu    the same flow at toy sizes on the CPU (gloo, fp32), to check the script itself
# It synthesises 48 videos at 128 px (UCF101 layout), prepares them, pre-trains 30 steps of FGKVMemPred on
# R3D-18 (the authors' `official` settings of params/official-ucf101-r3d18.yaml: 16x4 clips at 112 px, LARS,
# N = K = 4096) with batch 16 through `torchrun -m fgkv.cli pretrain`, fine-tunes the checkpoint for one epoch
# (`fgkv evaluate --protocol finetune`), and prints the pre-training clips/s and loss and the fine-tuning top-1. On the GPU
# it also pre-trains 3 steps in fp16 (autocast + GradScaler), resumes to 6 and prints the restored scaler's scale.
# Record its numbers in bench/README.md (date, GPU) when it has run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/fgkv ] || bash scripts/install
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg
mode=${1:-gpu}
work=${GPU_CHECK_DIR:-$(mktemp -d)}
params=params/official-ucf101-r3d18.yaml
if [ "$mode" = --cpu ]; then
  size=48; frames=24; sets=(--set clips.frames=4 --set clips.stride=2 --set clips.crop_size=32 --set downstream.short_side=[36,44]
    --set downstream.test_short_side=32 --set model.width=0.125 --set model.layers=[1,1,1,1] --set model.num_slots=64
    --set model.num_concepts=64 --set pretrain.batch_size=4 --set pretrain.workers=1 --set evaluate.workers=1)
  steps=3; precision=fp32; channels_last=false
elif [ -z "$mode" ] || [ "$mode" = gpu ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (use --cpu to check the script on the CPU)')"
  size=128; frames=80; sets=(--set pretrain.batch_size=16 --set pretrain.workers=8 --set evaluate.workers=8); steps=30; precision=bf16; channels_last=true
else echo "usage: bash bench/gpu_check.sh [--cpu]" >&2; exit 2; fi
data=(--set datasets.ucf101.videos="$work/raw/motion/videos" --set datasets.ucf101.annotations="$work/raw/motion/ucfTrainTestlist"
      --set prepared="$work/prepared" --set datasets.ucf101.min_frames=8)
run=(--params "$params" "${data[@]}" "${sets[@]}" --set pretrain.precision=$precision --set pretrain.channels_last=$channels_last
     --set pretrain.checkpoint_every=$steps --set pretrain.log_every=5
     --set evaluate.finetune.epochs=1 --set evaluate.finetune.batch_size=8 --set evaluate.finetune.warmup_epochs=0
     --set evaluate.finetune.precise_bn_batches=2 --set evaluate.eval_batch_size=4 --set downstream.test_clips=2 --set downstream.test_crops=1)
start=$(date +%s)
echo "gpu_check: work folder $work"
fgkv synth --out "$work/raw" --classes 4 --per-class 12 --frames $frames --size $size --workers 4 >/dev/null
fgkv prepare --params "$params" "${data[@]}" >/dev/null   # into $work/prepared/ucf101, the params file's pre-training dataset
torchrun --standalone --nproc_per_node=1 -m fgkv.cli pretrain "${run[@]}" --out "$work/pretrain" --max-steps $steps --no-progress
fgkv evaluate "${run[@]}" --checkpoint "$work/pretrain/checkpoint.pt" --out "$work/finetune" --protocol finetune > "$work/finetune.log"
if [ "$mode" != --cpu ]; then   # fp16 needs CUDA: its gradient scaler, checkpointed at step 3 and restored on resume
  half=(--set pretrain.precision=fp16 --set pretrain.checkpoint_every=3)
  torchrun --standalone --nproc_per_node=1 -m fgkv.cli pretrain "${run[@]}" "${half[@]}" --out "$work/fp16" --max-steps 3 --no-progress
  torchrun --standalone --nproc_per_node=1 -m fgkv.cli pretrain "${run[@]}" "${half[@]}" --out "$work/fp16" --resume --max-steps 6 --no-progress
fi
python - "$work" "$start" <<'PY'
import csv, json, sys, time
from pathlib import Path
work, start = Path(sys.argv[1]), float(sys.argv[2])
rates = [float(r['clips_per_s']) for r in csv.DictReader(open(work/'pretrain'/'throughput.tsv'), delimiter='\t')]
live = json.loads((work/'pretrain'/'live'/'metrics.json').read_text())
fine = json.loads((work/'finetune'/'metrics.json').read_text())
top1 = fine['finetune/top1']
print(f"gpu_check: pre-training {live['step']} steps, clips/s {rates[-1]:.1f} (last logged; median {sorted(rates)[len(rates) // 2]:.1f}), "
      f"loss {live['train']['loss']:.4f}; fine-tuning 1 epoch: top-1 {top1:.1f} % on {fine['finetune/num_videos']} test videos; {time.time() - start:.0f} s in all")
if (work/'fp16'/'checkpoint.pt').exists():
    from fgkv.checkpoints import load_checkpoint
    ck, half = load_checkpoint(work/'fp16'/'checkpoint.pt'), json.loads((work/'fp16'/'live'/'metrics.json').read_text())
    assert ck['step'] == 6 and ck['scaler'] and ck['scaler']['scale'] > 0, (ck['step'], ck['scaler'])
    print(f"gpu_check: fp16 pre-training 3 + 3 resumed steps, loss {half['train']['loss']:.4f}, GradScaler scale {ck['scaler']['scale']:g}")
PY
