r"""The CUDA C++ sources of the CuPy backend, as plain strings (no CuPy import, no CUDA header: they compile with
NVRTC through cupy.RawModule, standalone with nvcc, and as plain C++ for the CPU emulation — launch.CudaSource).

Each kernel is a per-thread body `<name>_thread<R>(long long idx, …)` templated over the real type R (float, double);
its __global__ wrapper, the instantiations and the argument checks are generated from the Kernel declarations below
(runtime.py). Complex numbers are (re, im) pairs of R, written out by hand: a complex64/complex128 array is exactly
such a pair array in memory, so complex arrays are passed as they are. Equation numbers: "(n)" the cell's module in
refimpl/cells/, "(r n)" refimpl/algorithms/rtrl.py, "(f n)" refimpl/algorithms/fptt.py.

CELLS — the per-step gate math of the dense cells, fused: one thread per (b, k) pair, reading the step's GEMM result
(h_{t-1} W_hhᵀ or ḡ_t W_hh, done by cuBLAS outside the kernel) and writing every cache field of that step:

    rnn_fwd_step   (1)(2)       a = pre + rec + b_hh,  h = φ(a)
    rnn_bwd_step   (3)(6)       ā = (dh + carry) ⊙ φ'
    gru_fwd_step   (1)-(5)      r, z, m, n, h from gi = x W_ihᵀ + b_ih and gh = h_{t-1} W_hhᵀ
    gru_bwd_step   (6)-(11)     ḡ_ih, ḡ_hh; the direct path h̄_t ⊙ z of (11) stays in `direct`
    lstm_fwd_step  (1)-(4)      i, f, g, o, c, tanh c, h
    lstm_bwd_step  (5)-(10)     ā; c̄ is carried in place in `carry_c`

A thread count n = T·B·H (instead of B·H) runs a backward kernel over all T steps at once: with propagate = 0 nothing
is carried between steps, which is what FPTT's error pass needs (its total adjoints e_t are known for every t).

LRU — the diagonal recurrence (3), its adjoint (5)(8) and the RTRL traces (r 8), complex as pairs:

    lru_scan_chunk  y_t = a ⊙ y_{t-1} + v_t over one time chunk per thread (c, b, k), from y0 in chunk 0 and from 0
                    in the others; reverse = 1 runs t = T-1 … 0 (the adjoint: a = conj(λ), v = dh, y = h̄)
    lru_scan_carry  one thread per (b, k): the true state at the end of every chunk but the last,
                    Y_c = y_end(c) + a^L ⊙ Y_{c-1}
    lru_scan_fix    one thread per (c ≥ 1, b, k): y_t += a^(s - cL + 1) ⊙ Y_{c-1} for the steps s of chunk c
                    With one chunk (C = 1) lru_scan_chunk alone is the sequential scan, one thread per (b, k)
                    marching over t; runtime.scan_chunks picks C (a parallel scan over T only where B·N leaves the
                    device under-filled).
    lru_dlam        one thread per (b, k): Σ_t conj(h_{t-1}) h̄_t (float64), the λ̄ of (5) before Σ_b
    lru_sens_state  one thread per (b, k): the state h and the traces Q, S^γ of (r 8) from zero (carry = 1: rtrl)
                    or the immediate derivatives (carry = 0: truncated, r 13); accumulates Σ_t conj(Q)δ and
                    Re Σ_t conj(S^γ)δ in float64 (recurrent = 0 skips the first: spatial, r 14); hands on h, Q, S^γ
                    after the chunk, λ^C and Σ_t conj(λ^{t+1}) δ_t (what a carried trace adds, online_lru.py)
    lru_sens_input  one thread per (b, k, i): the input trace Z_t = λ Z_{t-1} + x_t[i] of (r 8) from zero,
                    Σ_t conj(Z)δ and Z after the chunk
    lru_fptt_warmup one thread per (b, k): FPTT's warm-up over one chunk from the carried float64 product and
                    vector, and the state: direct = 1 (Q, e), Q <- Q conj(lam) then e <- e + Q dh_t (f 2)-(f 3);
                    direct = 0, the shooting warm-up (P, v'), (f 1), (f 2s)
    lru_fptt_errors one thread per (b, k): FPTT's error pass (f 1) over one chunk from the carried float64 v,
                    writing e_t in the state dtype and accumulating λ̄ and γ̄ (f 4); hands on v and the state

Every thread writes only its own entries (no shared memory, no atomics); partial sums over the batch are written per
(b, k) and summed by the host (cupy.sum), so results are deterministic.
"""

from __future__ import annotations

from .runtime import CudaSource, In, InOut, Int, Kernel, Out

# ------------------------------------------------------------------------------------------------------------ CELLS

_CELLS_BODY = r"""
// ------------------------------------------------------------------------------------------------ rnn, eqs. (1)-(6)
template <typename R>
RI_FN void rnn_fwd_step_thread(long long idx, const R* pre_t, const R* rec, const R* b_hh, R* h_t, int H,
                               int use_tanh) {
    const int k = (int)(idx % H);
    const R a = pre_t[idx] + rec[idx] + b_hh[k];                          // (1)
    h_t[idx] = use_tanh ? ri_tanh(a) : a;                                 // (2)
}

template <typename R>
RI_FN void rnn_bwd_step_thread(long long idx, const R* dh_t, const R* carry, const R* h_t, R* da_t, int use_tanh) {
    const R g = dh_t[idx] + carry[idx];                                   // (6) h-bar_t
    da_t[idx] = use_tanh ? g * (R(1) - h_t[idx] * h_t[idx]) : g;          // (3)
}

// ------------------------------------------------------------------------------------------------ gru, eqs. (1)-(12)
template <typename R>
RI_FN void gru_fwd_step_thread(long long idx, const R* gi_t, const R* gh, const R* b_hh, const R* h_prev_t, R* r_t,
                               R* z_t, R* n_t, R* hn_t, R* h_t, int H) {
    const long long b = idx / H;
    const int k = (int)(idx % H);
    const long long g0 = b * 3 * H;                                        // row b of the (B, 3H) gate blocks
    const R r = ri_sigmoid(gi_t[g0 + k] + (gh[g0 + k] + b_hh[k]));                        // (1)
    const R z = ri_sigmoid(gi_t[g0 + H + k] + (gh[g0 + H + k] + b_hh[H + k]));            // (2)
    const R m = gh[g0 + 2 * H + k] + b_hh[2 * H + k];                                     // (3)
    const R nn = ri_tanh(gi_t[g0 + 2 * H + k] + r * m);                                   // (4)
    h_t[idx] = (R(1) - z) * nn + z * h_prev_t[idx];                                       // (5)
    r_t[idx] = r;
    z_t[idx] = z;
    n_t[idx] = nn;
    hn_t[idx] = m;
}

template <typename R>
RI_FN void gru_bwd_step_thread(long long idx, const R* dh_t, R* direct, const R* rec, const R* h_prev_t,
                               const R* r_t, const R* z_t, const R* n_t, const R* hn_t, R* dg_ih_t, R* dg_hh_t,
                               int H, int propagate) {
    const long long b = idx / H;
    const int k = (int)(idx % H);
    const long long g0 = b * 3 * H;
    const R g = dh_t[idx] + (direct[idx] + rec[idx]);     // (12) h-bar_t = dh_t + (h-bar_{t+1} z_{t+1} + g_hh W_hh)
    const R r = r_t[idx], z = z_t[idx], nn = n_t[idx];
    const R dn = g * (R(1) - z);                                          // (6)
    const R dz = g * (h_prev_t[idx] - nn);                                // (6)
    const R da_n = dn * (R(1) - nn * nn);                                 // (7)
    const R dr = da_n * hn_t[idx];                                        // (8)
    const R dhn = da_n * r;                                               // (8)
    const R da_z = dz * z * (R(1) - z);                                   // (9)
    const R da_r = dr * r * (R(1) - r);                                   // (9)
    dg_ih_t[g0 + k] = da_r;                                               // (10) g_ih = [a_r, a_z, a_n]
    dg_ih_t[g0 + H + k] = da_z;
    dg_ih_t[g0 + 2 * H + k] = da_n;
    dg_hh_t[g0 + k] = da_r;                                               // (10) g_hh = [a_r, a_z, m-bar]
    dg_hh_t[g0 + H + k] = da_z;
    dg_hh_t[g0 + 2 * H + k] = dhn;
    direct[idx] = propagate ? g * z : R(0);                               // (11) the direct path of (5)
}

// ----------------------------------------------------------------------------------------------- lstm, eqs. (1)-(11)
template <typename R>
RI_FN void lstm_fwd_step_thread(long long idx, const R* pre_t, const R* rec, const R* b_hh, const R* c_prev_t,
                                R* i_t, R* f_t, R* g_t, R* o_t, R* c_t, R* tc_t, R* h_t, int H) {
    const long long b = idx / H;
    const int k = (int)(idx % H);
    const long long a0 = b * 4 * H;                                        // row b of the (B, 4H) pre-activations
    const R i = ri_sigmoid(pre_t[a0 + k] + rec[a0 + k] + b_hh[k]);                                    // (1)(2)
    const R f = ri_sigmoid(pre_t[a0 + H + k] + rec[a0 + H + k] + b_hh[H + k]);                        // (1)(2)
    const R g = ri_tanh(pre_t[a0 + 2 * H + k] + rec[a0 + 2 * H + k] + b_hh[2 * H + k]);               // (1)(2)
    const R o = ri_sigmoid(pre_t[a0 + 3 * H + k] + rec[a0 + 3 * H + k] + b_hh[3 * H + k]);            // (1)(2)
    const R c = f * c_prev_t[idx] + i * g;                                // (3)
    const R tc = ri_tanh(c);                                              // (4)
    h_t[idx] = o * tc;                                                    // (4)
    i_t[idx] = i;
    f_t[idx] = f;
    g_t[idx] = g;
    o_t[idx] = o;
    c_t[idx] = c;
    tc_t[idx] = tc;
}

template <typename R>
RI_FN void lstm_bwd_step_thread(long long idx, const R* dh_t, const R* carry_h, R* carry_c, const R* c_prev_t,
                                const R* i_t, const R* f_t, const R* g_t, const R* o_t, const R* tc_t, R* da_t,
                                int H, int propagate) {
    const long long b = idx / H;
    const int k = (int)(idx % H);
    const long long a0 = b * 4 * H;
    const R gh = dh_t[idx] + carry_h[idx];                                // (11) h-bar_t
    const R i = i_t[idx], f = f_t[idx], g = g_t[idx], o = o_t[idx], tc = tc_t[idx];
    const R d_o = gh * tc;                                                // (5)
    const R dc_hat = carry_c[idx] + gh * o * (R(1) - tc * tc);            // (6) both paths into c_t
    const R df = dc_hat * c_prev_t[idx];                                  // (7)
    const R di = dc_hat * g;                                              // (7)
    const R dg = dc_hat * i;                                              // (7)
    da_t[a0 + k] = di * i * (R(1) - i);                                   // (8) a_i
    da_t[a0 + H + k] = df * f * (R(1) - f);                               // (8) a_f
    da_t[a0 + 2 * H + k] = dg * (R(1) - g * g);                           // (8) a_g
    da_t[a0 + 3 * H + k] = d_o * o * (R(1) - o);                          // (8) a_o
    carry_c[idx] = propagate ? dc_hat * f : R(0);                         // (7) c-bar_{t-1}
}
"""

CELLS = CudaSource("cells", _CELLS_BODY, (
    Kernel("rnn_fwd_step", (In("pre_t", "R", "n"), In("rec", "R", "n"), In("b_hh", "R", "H"), Out("h_t", "R", "n"),
                            Int("H"), Int("use_tanh")), n="B·H",
           doc="h_t = φ(pre_t + rec + b_hh), eqs. (1)(2)"),
    Kernel("rnn_bwd_step", (In("dh_t", "R", "n"), In("carry", "R", "n"), In("h_t", "R", "n"), Out("da_t", "R", "n"),
                            Int("use_tanh")), n="B·H (or T·B·H)",
           doc="ā_t = (dh_t + carry) ⊙ φ'(a_t), eqs. (3)(6)"),
    Kernel("gru_fwd_step", (In("gi_t", "R", "3*n"), In("gh", "R", "3*n"), In("b_hh", "R", "3*H"),
                            In("h_prev_t", "R", "n"), Out("r_t", "R", "n"), Out("z_t", "R", "n"), Out("n_t", "R", "n"),
                            Out("hn_t", "R", "n"), Out("h_t", "R", "n"), Int("H")), n="B·H",
           doc="eqs. (1)-(5)"),
    Kernel("gru_bwd_step", (In("dh_t", "R", "n"), InOut("direct", "R", "n"), In("rec", "R", "n"),
                            In("h_prev_t", "R", "n"), In("r_t", "R", "n"), In("z_t", "R", "n"), In("n_t", "R", "n"),
                            In("hn_t", "R", "n"), Out("dg_ih_t", "R", "3*n"), Out("dg_hh_t", "R", "3*n"), Int("H"),
                            Int("propagate")), n="B·H (or T·B·H)",
           doc="eqs. (6)-(12); `direct` is read and overwritten with h̄_t ⊙ z"),
    Kernel("lstm_fwd_step", (In("pre_t", "R", "4*n"), In("rec", "R", "4*n"), In("b_hh", "R", "4*H"),
                             In("c_prev_t", "R", "n"), Out("i_t", "R", "n"), Out("f_t", "R", "n"),
                             Out("g_t", "R", "n"), Out("o_t", "R", "n"), Out("c_t", "R", "n"), Out("tc_t", "R", "n"),
                             Out("h_t", "R", "n"), Int("H")), n="B·H",
           doc="eqs. (1)-(4)"),
    Kernel("lstm_bwd_step", (In("dh_t", "R", "n"), In("carry_h", "R", "n"), InOut("carry_c", "R", "n"),
                             In("c_prev_t", "R", "n"), In("i_t", "R", "n"), In("f_t", "R", "n"), In("g_t", "R", "n"),
                             In("o_t", "R", "n"), In("tc_t", "R", "n"), Out("da_t", "R", "4*n"), Int("H"),
                             Int("propagate")), n="B·H (or T·B·H)",
           doc="eqs. (5)-(11); `carry_c` is read (c̄_t) and overwritten with c̄_{t-1}"),
))


# -------------------------------------------------------------------------------------------------------------- LRU

_LRU_BODY = r"""
// Complex numbers are (re, im) pairs; element p of a complex array sits at [2p], [2p + 1].
// Index conventions: BN = B*N, a state entry (t, b, k) is p = t*BN + b*N + k.

// --------------------------------------------------------------- linear scan y_t = a y_{t-1} + v_t, eqs. (3), (8)
template <typename R>
RI_FN void lru_scan_chunk_thread(long long idx, const R* v, const R* a, const R* y0, R* y, int T, int BN, int N,
                                 int L, int reverse) {
    const long long c = idx / BN;                    // the chunk: scan steps s in [c L, min(c L + L, T))
    const long long p = idx % BN;                    // the (b, k) pair
    const int k = (int)(p % N);
    const R ar = a[2 * k], ai = a[2 * k + 1];
    R yr = R(0), yi = R(0);                          // chunks after the first start from 0 (fixed by lru_scan_fix)
    if (c == 0) {
        yr = y0[2 * p];
        yi = y0[2 * p + 1];
    }
    const long long s_end = (c + 1) * L < T ? (c + 1) * L : T;
    for (long long s = c * L; s < s_end; ++s) {
        const long long t = reverse ? T - 1 - s : s;
        const long long o = 2 * (t * BN + p);
        const R nr = ar * yr - ai * yi + v[o];       // (3) a y + v
        const R ni = ar * yi + ai * yr + v[o + 1];
        yr = nr;
        yi = ni;
        y[o] = yr;
        y[o + 1] = yi;
    }
}

template <typename R>
RI_FN void lru_scan_carry_thread(long long idx, const R* y, const R* a, R* carry, int T, int BN, int N, int L,
                                 int chunks, int reverse) {
    const long long p = idx;
    const int k = (int)(p % N);
    const R ar = a[2 * k], ai = a[2 * k + 1];
    R pr = R(1), pi = R(0);                          // a^L
    for (int j = 0; j < L; ++j) {
        const R nr = pr * ar - pi * ai;
        const R ni = pr * ai + pi * ar;
        pr = nr;
        pi = ni;
    }
    R cr = R(0), ci = R(0);                          // Y_{c-1}, the true state at the end of the previous chunk
    for (int c = 0; c < chunks - 1; ++c) {           // chunks 0 .. C-2 all have L steps
        const long long s = (long long)c * L + L - 1;
        const long long t = reverse ? T - 1 - s : s;
        const long long o = 2 * (t * BN + p);
        const R nr = y[o] + (pr * cr - pi * ci);     // Y_c = y_end(c) + a^L Y_{c-1}
        const R ni = y[o + 1] + (pr * ci + pi * cr);
        cr = nr;
        ci = ni;
        carry[2 * ((long long)c * BN + p)] = cr;
        carry[2 * ((long long)c * BN + p) + 1] = ci;
    }
}

template <typename R>
RI_FN void lru_scan_fix_thread(long long idx, const R* a, const R* carry, R* y, int T, int BN, int N, int L,
                               int reverse) {
    const long long c = idx / BN + 1;                // chunks 1 .. C-1
    const long long p = idx % BN;
    const int k = (int)(p % N);
    const R ar = a[2 * k], ai = a[2 * k + 1];
    const R cr = carry[2 * ((c - 1) * BN + p)], ci = carry[2 * ((c - 1) * BN + p) + 1];
    R pr = ar, pi = ai;                              // a^(s - cL + 1)
    const long long s_end = (c + 1) * L < T ? (c + 1) * L : T;
    for (long long s = c * L; s < s_end; ++s) {
        const long long t = reverse ? T - 1 - s : s;
        const long long o = 2 * (t * BN + p);
        y[o] += pr * cr - pi * ci;
        y[o + 1] += pr * ci + pi * cr;
        const R nr = pr * ar - pi * ai;
        const R ni = pr * ai + pi * ar;
        pr = nr;
        pi = ni;
    }
}

// ------------------------------------------------------------------- lambda-bar of (5): sum_t conj(h_{t-1}) h-bar_t
template <typename R>
RI_FN void lru_dlam_thread(long long idx, const R* h_prev, const R* hbar, double* part, int T, int BN) {
    double sr = 0.0, si = 0.0;
    for (long long t = 0; t < T; ++t) {
        const long long o = 2 * (t * BN + idx);
        const R hr = h_prev[o], hi = h_prev[o + 1], gr = hbar[o], gi = hbar[o + 1];
        sr += (double)(hr * gr + hi * gi);           // (5) Re conj(h) g
        si += (double)(hr * gi - hi * gr);           // (5) Im conj(h) g
    }
    part[2 * idx] = sr;
    part[2 * idx + 1] = si;
}

// ---------------------------------------------------------------------------- RTRL-family traces, eqs. (r 8, 13, 14)
// Q_t = lam Q_{t-1} + lam h_{t-1} (S_nu = -e^nu Q, S_theta = i e^theta Q), S^g_t = lam S^g_{t-1} + u_t (lru 10),
// from Q_{-1} = S^g_{-1} = 0 (the chunk's own part; a carried trace S_{-1} adds lam^{t+1} S_{-1}, r 8, which the host
// handles once per call from w = sum_t conj(lam^{t+1}) delta_t and lamT = lam^C, both in double);
// carry = 0 keeps only the immediate parts (truncated, r 13); recurrent = 0 skips Q (spatial, r 14).
template <typename R>
RI_FN void lru_sens_state_thread(long long idx, const R* u, const R* h0, const R* dh, const R* a, double* gq,
                                 double* gg, R* hT, R* qT, R* sT, double* w, double* lamT, int T, int BN, int N,
                                 int carry, int recurrent) {
    const long long p = idx;
    const int k = (int)(p % N);
    const R lr = a[2 * k], li = a[2 * k + 1];
    const double cr = (double)lr, ci = (double)li;
    R hr = h0[2 * p], hi = h0[2 * p + 1];
    R qr = R(0), qi = R(0), sr = R(0), si = R(0);
    double gqr = 0.0, gqi = 0.0, gs = 0.0;
    double pr = 1.0, pi = 0.0, wr = 0.0, wi = 0.0;                      // lam^{t+1}, sum_t conj(lam^{t+1}) delta_t
    for (long long t = 0; t < T; ++t) {
        const long long o = 2 * (t * BN + p);
        const R ar = lr * hr - li * hi, ai = lr * hi + li * hr;          // lam h_{t-1}
        const R ur = u[o], ui = u[o + 1];                                // u_t = gamma (B x_t), eq. (2)
        if (carry) {
            const R nqr = lr * qr - li * qi + ar, nqi = lr * qi + li * qr + ai;      // (r 8) Q_t
            const R nsr = lr * sr - li * si + ur, nsi = lr * si + li * sr + ui;      // (r 8) S^g_t
            qr = nqr; qi = nqi; sr = nsr; si = nsi;
        } else {
            qr = ar; qi = ai; sr = ur; si = ui;                          // (r 13) S_t = P_t
        }
        hr = ar + ur;                                                    // (3) h_t
        hi = ai + ui;
        const R dr = dh[o], di = dh[o + 1];
        if (recurrent) {
            gqr += (double)(qr * dr + qi * di);                          // (r 4, 7) Re conj(Q) delta
            gqi += (double)(qr * di - qi * dr);                          //          Im conj(Q) delta
        }
        gs += (double)(sr * dr + si * di);                               // (r 4, 7) Re conj(S^g) delta
        const double npr = cr * pr - ci * pi, npi = cr * pi + ci * pr;   // lam^{t+1}
        pr = npr;
        pi = npi;
        wr += pr * (double)dr + pi * (double)di;                         // conj(lam^{t+1}) delta_t
        wi += pr * (double)di - pi * (double)dr;
    }
    gq[2 * p] = gqr;
    gq[2 * p + 1] = gqi;
    gg[p] = gs;
    hT[2 * p] = hr;
    hT[2 * p + 1] = hi;
    qT[2 * p] = qr;
    qT[2 * p + 1] = qi;
    sT[2 * p] = sr;
    sT[2 * p + 1] = si;
    w[2 * p] = wr;
    w[2 * p + 1] = wi;
    lamT[2 * p] = pr;
    lamT[2 * p + 1] = pi;
}

// Z_t = lam Z_{t-1} + x_t[i] from Z_{-1} = 0 (S_Bre = gamma Z, S_Bim = i gamma Z, r 8); accumulates
// sum_t conj(Z) delta and hands on Z_{C-1}.
template <typename R>
RI_FN void lru_sens_input_thread(long long idx, const R* x, const R* dh, const R* a, double* G, R* ZT, int T, int B,
                                 int N, int I) {
    const int i = (int)(idx % I);
    const long long q = idx / I;
    const int k = (int)(q % N);
    const long long b = q / N;
    const R lr = a[2 * k], li = a[2 * k + 1];
    R zr = R(0), zi = R(0);
    double gr = 0.0, gi = 0.0;
    for (long long t = 0; t < T; ++t) {
        const R xv = x[(t * B + b) * I + i];
        const long long o = 2 * ((t * B + b) * N + k);
        const R nzr = lr * zr - li * zi + xv;                            // (r 8) Z_t
        const R nzi = lr * zi + li * zr;
        zr = nzr;
        zi = nzi;
        const R dr = dh[o], di = dh[o + 1];
        gr += (double)(zr * dr + zi * di);                               // (r 4, 7) Re conj(Z) delta
        gi += (double)(zr * di - zi * dr);                               //          Im conj(Z) delta
    }
    G[2 * idx] = gr;
    G[2 * idx + 1] = gi;
    ZT[2 * idx] = zr;
    ZT[2 * idx + 1] = zi;
}

// ------------------------------------------------------------------------------------------ FPTT, eqs. (f 1)-(f 4)
// Carriers Q, e, v, P in double (the reference's default carrier dtype); the states and e_t's copy es in R. Between
// steps the shooting warm-up and the error phase carry v_t = e_t - dh_t; each step inverts it: e_t = v_{t-1} /
// conj(lam) (f 1). The direct warm-up inverts nothing.

// Phase 1 over one chunk from the carried product M and vector w; also runs the state.
//   direct = 1: M = Q, w = e — Q <- Q conj(lam) (f 2), then e <- e + Q dh_t with the new Q (f 3); nothing inverted.
//   direct = 0: M = P, w = v' — e'_t = v'_{t-1} / conj(lam) (f 1), v'_t = e'_t - dh_t, P <- P conj(lam) (f 2s).
template <typename R>
RI_FN void lru_fptt_warmup_thread(long long idx, const R* u, const R* h0, const R* dh, const R* a, const double* M0,
                                  const double* w0, double* M, double* w, R* hT, int T, int BN, int N, int direct) {
    const long long p = idx;
    const int k = (int)(p % N);
    const R lr = a[2 * k], li = a[2 * k + 1];
    const double cr = (double)lr, ci = (double)li;                       // lam in the carrier dtype
    const double n2 = cr * cr + ci * ci;
    double Mr = M0[2 * p], Mi = M0[2 * p + 1], wr = w0[2 * p], wi = w0[2 * p + 1];
    R hr = h0[2 * p], hi = h0[2 * p + 1];
    for (long long t = 0; t < T; ++t) {
        const long long o = 2 * (t * BN + p);
        const double dr = (double)dh[o], di = (double)dh[o + 1];
        if (!direct) {
            const double er = (wr * cr - wi * ci) / n2;                  // (f 1) e'_t = v'_{t-1} / conj(lam)
            const double ei = (wi * cr + wr * ci) / n2;
            wr = er - dr;                                                // v'_t = e'_t - dh_t
            wi = ei - di;
        }
        const double nMr = Mr * cr + Mi * ci, nMi = Mi * cr - Mr * ci;  // (f 2), (f 2s) M <- M conj(lam)
        Mr = nMr;
        Mi = nMi;
        if (direct) {
            wr += Mr * dr - Mi * di;                                     // (f 3) e += Q_t dh_t
            wi += Mr * di + Mi * dr;
        }
        const R nhr = lr * hr - li * hi + u[o], nhi = lr * hi + li * hr + u[o + 1];   // (3) h_t
        hr = nhr;
        hi = nhi;
    }
    M[2 * p] = Mr;
    M[2 * p + 1] = Mi;
    w[2 * p] = wr;
    w[2 * p + 1] = wi;
    hT[2 * p] = hr;
    hT[2 * p + 1] = hi;
}

// Phase 2 (errors) over one chunk from the carried v: (f 1), e_t written in the state dtype, lambda-bar and
// gamma-bar accumulated (f 4).
template <typename R>
RI_FN void lru_fptt_errors_thread(long long idx, const R* u, const R* h0, const R* dh, const R* a, const double* v0,
                                  R* es, double* dlam, double* gg, double* v, R* hT, int T, int BN, int N) {
    const long long p = idx;
    const int k = (int)(p % N);
    const R lr = a[2 * k], li = a[2 * k + 1];
    const double cr = (double)lr, ci = (double)li;
    const double n2 = cr * cr + ci * ci;
    double vr = v0[2 * p], vi = v0[2 * p + 1];
    R hr = h0[2 * p], hi = h0[2 * p + 1];
    double dlr = 0.0, dli = 0.0, gs = 0.0;
    for (long long t = 0; t < T; ++t) {
        const long long o = 2 * (t * BN + p);
        const double er = (vr * cr - vi * ci) / n2;                      // (f 1) e_t = v_{t-1} / conj(lam)
        const double ei = (vi * cr + vr * ci) / n2;
        const R sr = (R)er, si = (R)ei;                                  // e_t in the state dtype: u-bar_t (f 4)
        es[o] = sr;
        es[o + 1] = si;
        const R ur = u[o], ui = u[o + 1];
        dlr += (double)(hr * sr + hi * si);                              // (5) lam-bar += conj(h_{t-1}) u-bar
        dli += (double)(hr * si - hi * sr);
        gs += (double)(ur * sr + ui * si);                               // (6)(7) Re conj(u) u-bar
        const R nhr = lr * hr - li * hi + ur, nhi = lr * hi + li * hr + ui;   // (3) h_t
        hr = nhr;
        hi = nhi;
        vr = er - (double)dh[o];                                         // v_t = e_t - dh_t
        vi = ei - (double)dh[o + 1];
    }
    dlam[2 * p] = dlr;
    dlam[2 * p + 1] = dli;
    gg[p] = gs;
    v[2 * p] = vr;
    v[2 * p + 1] = vi;
    hT[2 * p] = hr;
    hT[2 * p + 1] = hi;
}
"""

LRU = CudaSource("lru", _LRU_BODY, (
    Kernel("lru_scan_chunk", (In("v", "C", "T*BN"), In("a", "C", "N"), In("y0", "C", "BN"), Out("y", "C", "T*BN"),
                              Int("T"), Int("BN"), Int("N"), Int("L"), Int("reverse")), n="C·B·N",
           doc="the scan over one chunk of L steps"),
    Kernel("lru_scan_carry", (In("y", "C", "T*BN"), In("a", "C", "N"), Out("carry", "C", "(chunks-1)*BN"), Int("T"),
                              Int("BN"), Int("N"), Int("L"), Int("chunks"), Int("reverse")), n="B·N",
           doc="the true states at the ends of the chunks"),
    Kernel("lru_scan_fix", (In("a", "C", "N"), In("carry", "C", "n"), InOut("y", "C", "T*BN"), Int("T"), Int("BN"),
                            Int("N"), Int("L"), Int("reverse")), n="(C − 1)·B·N",
           doc="adds the carried states into chunks 1 … C−1"),
    Kernel("lru_dlam", (In("h_prev", "C", "T*BN"), In("hbar", "C", "T*BN"), Out("part", "D", "2*n"), Int("T"),
                        Int("BN")), n="B·N",
           doc="Σ_t conj(h_{t-1}) h̄_t per (b, k)"),
    Kernel("lru_sens_state", (In("u", "C", "T*BN"), In("h0", "C", "BN"), In("dh", "C", "T*BN"), In("a", "C", "N"),
                              Out("gq", "D", "2*n"), Out("gg", "D", "n"), Out("hT", "C", "n"), Out("qT", "C", "n"),
                              Out("sT", "C", "n"), Out("w", "Z", "n"), Out("lamT", "Z", "n"), Int("T"), Int("BN"),
                              Int("N"), Int("carry"), Int("recurrent")), n="B·N",
           doc="the state traces Q, S^γ (r 8) from zero or the immediate derivatives (r 13); the state after the "
               "chunk; Σ_t conj(λ^{t+1}) δ_t and λ^C for a carried trace"),
    Kernel("lru_sens_input", (In("x", "R", "T*B*I"), In("dh", "C", "T*B*N"), In("a", "C", "N"), Out("G", "D", "2*n"),
                              Out("ZT", "C", "n"), Int("T"), Int("B"), Int("N"), Int("I")), n="B·N·I",
           doc="the input trace Z (r 8) from zero, and Z after the chunk"),
    Kernel("lru_fptt_warmup", (In("u", "C", "T*BN"), In("h0", "C", "BN"), In("dh", "C", "T*BN"), In("a", "C", "N"),
                               In("M0", "Z", "n"), In("w0", "Z", "n"), Out("M", "Z", "n"), Out("w", "Z", "n"),
                               Out("hT", "C", "n"), Int("T"), Int("BN"), Int("N"), Int("direct")), n="B·N",
           doc="FPTT's warm-up over one chunk from the carried product and vector: direct (Q, e), (f 2)-(f 3), or "
               "shooting (P, v'), (f 1), (f 2s)"),
    Kernel("lru_fptt_errors", (In("u", "C", "T*BN"), In("h0", "C", "BN"), In("dh", "C", "T*BN"), In("a", "C", "N"),
                               In("v0", "Z", "n"), Out("es", "C", "T*BN"), Out("dlam", "D", "2*n"), Out("gg", "D", "n"),
                               Out("v", "Z", "n"), Out("hT", "C", "n"), Int("T"), Int("BN"), Int("N")), n="B·N",
           doc="FPTT's error pass over one chunk from the carried v, (f 1), (f 4)"),
))

#: Every CUDA source of the backend (the compile check walks this list).
SOURCES = (CELLS, LRU)
