import torch, time
m = torch.nn.Sequential(torch.nn.Conv2d(3,16,3,padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16,4))
opt = torch.optim.SGD(m.parameters(), lr=0.1)
x = torch.randn(64,3,32,32); y = torch.randint(4,(64,))
mc = torch.compile(m)
t=time.time()
for i in range(3):
    loss = torch.nn.functional.cross_entropy(mc(x), y); opt.zero_grad(); loss.backward(); opt.step()
print("ok", time.time()-t, loss.item())
