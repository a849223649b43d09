"""A numpy model of the warp-level data movement of the tensor-core attention kernels
(csrc/attention/kernels.cuh), to check their fragment index math without a GPU.

mma.m16n8k16, ldmatrix.x4 and ldmatrix.x4.trans are modelled from the PTX ISA's fragment layouts
(the table at the top of the MMA section of kernels.cuh); the shared-memory addresses and register
shuffles are transcribed from the kernels' index expressions. For head_dim 32, 64 and 128 it checks,
for every warp of a 64 x 64 tile, that the forward's S = Q K^T and O = P V, and the backward's S^T,
dP^T, dV, dK and dQ land in the right registers (the softmax itself is replaced by the identity /
an elementwise product: only the data movement is under test). Values are float64, so agreement is
to rounding.

    python csrc/attention/fragment_model.py        # after any change to fragment indexing

It is a model, not the kernel: keep it in step with kernels.cuh by hand. The kernels themselves run
only on a GPU (tests/test_attention.py, bench/gpu_check.sh).
"""
import numpy as np

def gt(l): return l // 4, l % 4

def mma(a, b, c):
    """a: [32][4] pairs, b: [32][2] pairs, c: [32][4] floats -> d [32][4] (m16n8k16, PTX layouts)."""
    A = np.zeros((16, 16)); B = np.zeros((16, 8)); C = np.zeros((16, 8))
    for l in range(32):
        g, t = gt(l)
        A[g, 2*t:2*t+2] = a[l][0]; A[g+8, 2*t:2*t+2] = a[l][1]
        A[g, 2*t+8:2*t+10] = a[l][2]; A[g+8, 2*t+8:2*t+10] = a[l][3]
        B[2*t:2*t+2, g] = b[l][0]; B[2*t+8:2*t+10, g] = b[l][1]
        C[g, 2*t:2*t+2] = c[l][0:2]; C[g+8, 2*t:2*t+2] = c[l][2:4]
    D = A @ B + C
    out = []
    for l in range(32):
        g, t = gt(l)
        out.append([D[g, 2*t], D[g, 2*t+1], D[g+8, 2*t], D[g+8, 2*t+1]])
    return out

def lds32(sm, i): return np.array([sm[i], sm[i+1]])

def ldmatrix_x4_trans(sm, addr):
    """addr[lane]: element index of the row lane%8 of matrix lane//8. Returns [32][4] pairs."""
    mats = [np.array([sm[addr[8*i+j]:addr[8*i+j]+8] for j in range(8)]) for i in range(4)]
    out = []
    for l in range(32):
        g, t = gt(l)
        out.append([np.array([M[2*t, g], M[2*t+1, g]]) for M in mats])
    return out

def ldmatrix_x4(sm, addr):
    mats = [np.array([sm[addr[8*i+j]:addr[8*i+j]+8] for j in range(8)]) for i in range(4)]
    out = []
    for l in range(32):
        g, t = gt(l)
        out.append([np.array([M[g, 2*t], M[g, 2*t+1]]) for M in mats])
    return out

def pack(lo, hi): return np.array([lo, hi])

rng = np.random.default_rng(0)

def fwd_check(D):
    LD = D + 8
    Qt = rng.standard_normal((64, D)); Kt = rng.standard_normal((64, D)); Vt = rng.standard_normal((64, D))
    def tosm(X):
        sm = np.zeros(64 * LD); 
        for r in range(64): sm[r*LD:r*LD+D] = X[r]
        return sm
    Qs, Ks, Vs = tosm(Qt), tosm(Kt), tosm(Vt)
    KS, ND = D // 16, D // 8
    for warp in range(4):
        # qf
        qf = []
        for l in range(32):
            g, t4 = gt(l)
            r0 = (warp*16 + g)*LD + 2*t4; r1 = r0 + 8*LD
            qf.append([[lds32(Qs, r0 + ks*16), lds32(Qs, r1 + ks*16), lds32(Qs, r0 + ks*16 + 8), lds32(Qs, r1 + ks*16 + 8)] for ks in range(KS)])
        s = [[[0.0]*4 for _ in range(8)] for _ in range(32)]  # [lane][nt][e]
        kr = [((l//16)*8 + l % 8)*LD + ((l//8) & 1)*8 for l in range(32)]
        for nt in range(0, 8, 2):
            for ks in range(KS):
                bk = ldmatrix_x4(Ks, [x + nt*8*LD + ks*16 for x in kr])
                a = [qf[l][ks] for l in range(32)]
                d0 = mma(a, [[bk[l][0], bk[l][1]] for l in range(32)], [s[l][nt] for l in range(32)])
                d1 = mma(a, [[bk[l][2], bk[l][3]] for l in range(32)], [s[l][nt+1] for l in range(32)])
                for l in range(32): s[l][nt] = d0[l]; s[l][nt+1] = d1[l]
        S = Qt[warp*16:warp*16+16] @ Kt.T
        for l in range(32):
            g, t4 = gt(l)
            for nt in range(8):
                for e in range(4):
                    row = g + (8 if e >= 2 else 0); col = nt*8 + 2*t4 + (e & 1)
                    assert abs(s[l][nt][e] - S[row, col]) < 1e-9, ("S", D, warp, l, nt, e)
        # P = S (skip softmax: test the data movement only)
        o = [[[0.0]*4 for _ in range(ND)] for _ in range(32)]
        for kk in range(4):
            a = [[pack(s[l][2*kk][0], s[l][2*kk][1]), pack(s[l][2*kk][2], s[l][2*kk][3]),
                  pack(s[l][2*kk+1][0], s[l][2*kk+1][1]), pack(s[l][2*kk+1][2], s[l][2*kk+1][3])] for l in range(32)]
            for nd in range(0, ND, 2):
                addr = [(kk*16 + ((l//8) & 1)*8 + l % 8)*LD + (l//16)*8 + nd*8 for l in range(32)]
                bv = ldmatrix_x4_trans(Vs, addr)
                d0 = mma(a, [[bv[l][0], bv[l][1]] for l in range(32)], [o[l][nd] for l in range(32)])
                d1 = mma(a, [[bv[l][2], bv[l][3]] for l in range(32)], [o[l][nd+1] for l in range(32)])
                for l in range(32): o[l][nd] = d0[l]; o[l][nd+1] = d1[l]
        O = S @ Vt
        for l in range(32):
            g, t4 = gt(l)
            for nd in range(ND):
                for e in range(4):
                    row = g + (8 if e >= 2 else 0); col = nd*8 + 2*t4 + (e & 1)
                    assert abs(o[l][nd][e] - O[row, col]) < 1e-8, ("O", D, warp, l, nd, e)
    print("fwd ok", D)

def bwd_check(D):
    LD = D + 8; DsLd = 64 + 8
    Qt, Kt, Vt, dOt = (rng.standard_normal((64, D)) for _ in range(4))
    def tosm(X):
        sm = np.zeros(64 * LD)
        for r in range(64): sm[r*LD:r*LD+D] = X[r]
        return sm
    Qs, Ks, Vs, dOs = tosm(Qt), tosm(Kt), tosm(Vt), tosm(dOt)
    dSs = np.zeros(64 * DsLd)
    KS, ND = D // 16, D // 8
    St_full = Kt @ Qt.T      # keys x queries
    dPt_full = Vt @ dOt.T
    # model P^T := S^T, dS^T := S^T * dP^T (elementwise) to test data movement
    dSt_full = St_full * dPt_full
    dvs, dks, pps = {}, {}, {}
    for warp in range(4):
        pp = [[[None]*4 for _ in range(4)] for _ in range(32)]; dd = [[[None]*4 for _ in range(4)] for _ in range(32)]
        for half in range(2):
            st = [[[0.0]*4 for _ in range(4)] for _ in range(32)]; dpt = [[[0.0]*4 for _ in range(4)] for _ in range(32)]
            ka_ptr = [(warp*16 + ((l//8) & 1)*8 + l % 8)*LD + (l//16)*8 for l in range(32)]
            qb_ptr = [((l//16)*8 + l % 8)*LD + ((l//8) & 1)*8 for l in range(32)]
            for ks in range(KS):
                ka = ldmatrix_x4(Ks, [x + ks*16 for x in ka_ptr]); va = ldmatrix_x4(Vs, [x + ks*16 for x in ka_ptr])
                for n in range(0, 4, 2):
                    nt = half*4 + n
                    bq = ldmatrix_x4(Qs, [x + nt*8*LD + ks*16 for x in qb_ptr]); bo = ldmatrix_x4(dOs, [x + nt*8*LD + ks*16 for x in qb_ptr])
                    r = [mma(ka, [[bq[l][0], bq[l][1]] for l in range(32)], [st[l][n] for l in range(32)]),
                         mma(ka, [[bq[l][2], bq[l][3]] for l in range(32)], [st[l][n+1] for l in range(32)]),
                         mma(va, [[bo[l][0], bo[l][1]] for l in range(32)], [dpt[l][n] for l in range(32)]),
                         mma(va, [[bo[l][2], bo[l][3]] for l in range(32)], [dpt[l][n+1] for l in range(32)])]
                    for l in range(32): st[l][n], st[l][n+1], dpt[l][n], dpt[l][n+1] = r[0][l], r[1][l], r[2][l], r[3][l]
            for l in range(32):
                g, t4 = gt(l)
                for n in range(4):
                    nt = half*4 + n
                    for e in range(4):
                        key = warp*16 + g + (8 if e >= 2 else 0); c = nt*8 + 2*t4 + (e & 1)
                        assert abs(st[l][n][e] - St_full[key, c]) < 1e-9, "S^T"
                        assert abs(dpt[l][n][e] - dPt_full[key, c]) < 1e-9, "dP^T"
                        dpt[l][n][e] = st[l][n][e] * dpt[l][n][e]
                    pp[l][nt//2][(nt & 1)*2] = pack(st[l][n][0], st[l][n][1]); pp[l][nt//2][(nt & 1)*2+1] = pack(st[l][n][2], st[l][n][3])
                    dd[l][nt//2][(nt & 1)*2] = pack(dpt[l][n][0], dpt[l][n][1]); dd[l][nt//2][(nt & 1)*2+1] = pack(dpt[l][n][2], dpt[l][n][3])
        for l in range(32):
            g, t4 = gt(l)
            for nt in range(8):
                d0 = (warp*16 + g)*DsLd + nt*8 + 2*t4
                dSs[d0:d0+2] = dd[l][nt//2][(nt & 1)*2]; dSs[d0 + 8*DsLd:d0 + 8*DsLd + 2] = dd[l][nt//2][(nt & 1)*2+1]
        dv = [[[0.0]*4 for _ in range(ND)] for _ in range(32)]; dk = [[[0.0]*4 for _ in range(ND)] for _ in range(32)]
        for kk in range(4):
            for nd in range(0, ND, 2):
                addr = [(kk*16 + ((l//8) & 1)*8 + l % 8)*LD + (l//16)*8 + nd*8 for l in range(32)]
                bo = ldmatrix_x4_trans(dOs, addr); bq = ldmatrix_x4_trans(Qs, addr)
                pa = [pp[l][kk] for l in range(32)]; da = [dd[l][kk] for l in range(32)]
                r = [mma(pa, [[bo[l][0], bo[l][1]] for l in range(32)], [dv[l][nd] for l in range(32)]),
                     mma(pa, [[bo[l][2], bo[l][3]] for l in range(32)], [dv[l][nd+1] for l in range(32)]),
                     mma(da, [[bq[l][0], bq[l][1]] for l in range(32)], [dk[l][nd] for l in range(32)]),
                     mma(da, [[bq[l][2], bq[l][3]] for l in range(32)], [dk[l][nd+1] for l in range(32)])]
                for l in range(32): dv[l][nd], dv[l][nd+1], dk[l][nd], dk[l][nd+1] = r[0][l], r[1][l], r[2][l], r[3][l]
        dV = St_full @ dOt; dK = dSt_full @ Qt
        for l in range(32):
            g, t4 = gt(l)
            for nd in range(ND):
                for e in range(4):
                    key = warp*16 + g + (8 if e >= 2 else 0); col = nd*8 + 2*t4 + (e & 1)
                    assert abs(dv[l][nd][e] - dV[key, col]) < 1e-8, "dV"
                    assert abs(dk[l][nd][e] - dK[key, col]) < 1e-8, "dK"
    # dQ phase (after all warps wrote dS^T)
    dQ = dSt_full.T @ Kt
    for warp in range(4):
        kChunk = min(ND, 8)
        for n0 in range(0, ND, kChunk):
            dq = [[[0.0]*4 for _ in range(kChunk)] for _ in range(32)]
            for kk in range(4):
                addr_a = [(kk*16 + (l//16)*8 + l % 8)*DsLd + warp*16 + ((l//8) & 1)*8 for l in range(32)]
                a = ldmatrix_x4_trans(dSs, addr_a)
                addr_k = [(kk*16 + ((l//8) & 1)*8 + l % 8)*LD + (l//16)*8 for l in range(32)]
                for i in range(0, kChunk, 2):
                    bk = ldmatrix_x4_trans(Ks, [x + (n0 + i)*8 for x in addr_k])
                    d0 = mma(a, [[bk[l][0], bk[l][1]] for l in range(32)], [dq[l][i] for l in range(32)])
                    d1 = mma(a, [[bk[l][2], bk[l][3]] for l in range(32)], [dq[l][i+1] for l in range(32)])
                    for l in range(32): dq[l][i] = d0[l]; dq[l][i+1] = d1[l]
            for l in range(32):
                g, t4 = gt(l)
                for i in range(kChunk):
                    for e in range(4):
                        q = warp*16 + g + (8 if e >= 2 else 0); col = (n0 + i)*8 + 2*t4 + (e & 1)
                        assert abs(dq[l][i][e] - dQ[q, col]) < 1e-8, ("dQ", D, warp, l, i, e)
    print("bwd ok", D)

for D in (32, 64, 128):
    fwd_check(D)
for D in (32, 64, 128):
    bwd_check(D)
