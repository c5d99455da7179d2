"""`sora distill`: a smaller student trained on the teacher's data with a KL term to the frozen teacher."""
