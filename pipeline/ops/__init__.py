"""Operations: memory planning (`sora plan`), job submission to a Ray cluster (`sora submit`, `sora jobs`)."""
