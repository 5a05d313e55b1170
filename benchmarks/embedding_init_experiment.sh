#!/bin/bash
# Concept-token embeddings: random (A) vs initialised from the quantizer's codebooks (B) vs codebooks, frozen (C).
# recbase-small, EPOCHS epochs each, evaluated on USERS users per domain; run on a GPU:
#   EPOCHS=4 USERS=1000 bash benchmarks/embedding_init_experiment.sh
# Results: $RESULTS/{A,B,C}.md (benchmarks/results/gpu/embedding-init-*.md holds the run reported in the note).
set -e
W=${WORK:-outputs/embedding-init}; RESULTS=${RESULTS:-$W/results}; mkdir -p $W $RESULTS
EPOCHS=${EPOCHS:-4}; USERS=${USERS:-1000}
COMMON="--preset recbase-small --num_epochs $EPOCHS --per_device_batch_size 256 --learning_rate 1e-3 --mixed_precision bf16"
python -m training.main --output_dir $W/A --work_dir $W/work $COMMON --eval_max_users $USERS --eval_batch_size 128  # random init, the default
cp $W/A/eval_results.md $RESULTS/A.md
for V in B C; do
  EXTRA="--embedding_init codebooks"; [ $V = C ] && EXTRA="$EXTRA --freeze_concept_embeddings"
  python -m training.pretrain --corpus_dir $W/work/corpus --tokenizer_dir $W/work/item-tokenizer --output_dir $W/$V \
    --domains amazon14_beauty yelp_p5 amazon18_scientific $COMMON $EXTRA
  python -m training.evaluate --checkpoint $W/$V --corpus_dir $W/work/corpus --domains amazon14_beauty amazon18_office ml-100k \
    --zero_shot amazon18_office ml-100k --max_users $USERS --batch_size 128
  cp $W/$V/eval_results.md $RESULTS/$V.md
done
