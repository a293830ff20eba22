"""gloo all-reduce cost on this machine (2 ranks, 1 thread each): the proxyless supernet's gradient (15.34 MB), 100
small tensors (one cross-rank BN layer's 2C+1 floats each), one small one.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 tools/gloo_allreduce.py
"""
import os, time, torch, torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group("gloo")
r = dist.get_rank()
def t(fn, n=20):
    fn(); dist.barrier(); t0 = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t0) / n * 1e3
big = torch.zeros(3_835_146)
small = [torch.zeros(2 * 64 + 1) for _ in range(100)]
a = t(lambda: dist.all_reduce(big))
b = t(lambda: [dist.all_reduce(s) for s in small])
c = t(lambda: dist.all_reduce(torch.zeros(129)), 200)
if r == 0: print(f"15.34 MB all_reduce {a:.1f} ms; 100 small (129 floats) {b:.1f} ms; one small {c*1e3:.0f} us")
dist.destroy_process_group()
