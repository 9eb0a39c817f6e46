"""Everything that reaches into DeepSpeed's engine and ZeRO optimizer internals (DeepSpeed 0.19).

    setup       one DeepSpeed config from the JSON and the YAML, AdamW, the LR schedule, ``deepspeed.initialize``
    partitions  this rank's share of the ZeRO optimizer state: fp32 master partitions, their groups, refreshes
    ema         EMA weights sharded like the fp32 master weights
    staged      staged fine-tuning (TRAIN.FIX_ITER / FIX_KEYS / FIX_LR_MUL) and frozen parameters
"""
