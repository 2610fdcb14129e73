// Embedding gather: out[r][i] = embed_tokens[tokens[r], i], widened to fp32 (the residual stream's
// type); row r = blockIdx.y. A decode step passes its step buffer, whose first entry is the token.
// Defines: HIDDEN, VOCAB.

extern "C" __global__ void embedding(const int* __restrict__ tokens,
                                     const f16_t* __restrict__ table,
                                     float* __restrict__ out) {
    pdl_wait();
    pdl_trigger();
    int token = tokens[blockIdx.y];
    out += (long long)blockIdx.y * HIDDEN;
    // Ids are validated on the host; a bad id here still never reads out of bounds.
    if (token < 0 || token >= VOCAB) token = 0;
    const f16_t* row = table + (long long)token * HIDDEN;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HIDDEN; i += gridDim.x * blockDim.x)
        out[i] = f16_to_f32(row[i]);
}
