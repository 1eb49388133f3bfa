#!/usr/bin/env bash
# Reduced-budget comparison at a large batch (issue 7): WRN-10-1 on a 12,000-image real CIFAR-10
# subset (1,000 train / 200 test images per class, first files of each class folder of
# cifar10-jpeg.tar.gz), batch 1024, 3 epochs, lr 1.6 (0.1 x 1024/64), 1 warm-up epoch, cosine.
set -u
DATA=${DATA:-.cache/cifar10_12k}
COMMON="10-1,source=folder,path=$DATA,cache_dir=,batch_size=1024,epochs=3,lr=1.6,schedule=cosine,warmup_epochs=1,eval_batch_size=1000,num_devices=1,ghost_batch_size=64"
# classifier_init=zeros: the NF classifier these rows were trained with (NF's default before issue 15;
# now N(0, 0.01^2)), so that this script reproduces README.md's numbers.
for variant in "normalizer=batchnorm" "normalizer=skipinit" "normalizer=nf,classifier_init=zeros" \
               "normalizer=nf,classifier_init=zeros,agc_clip=0.02"; do
  name=$(echo "$variant" | tr ',=' '__')
  python scripts/train.py --config="configs/cifar10_wrn.py:$COMMON,$variant" --workdir="runs/nf_agc_cpu/$name" \
      > "runs/nf_agc_cpu_$name.log" 2>&1
  echo "$variant: $(cat runs/nf_agc_cpu/$name/status.json | tr -d '\n ')"
done
