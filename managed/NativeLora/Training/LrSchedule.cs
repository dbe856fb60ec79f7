namespace NativeLora.Training;

/// <summary>
/// Learning rate per optimizer step as transformers' schedulers give it (step counted from 0, so a
/// run with warmup starts at 0): linear warmup over ceil(warmup_ratio·total) steps, then cosine to
/// 0, linear to 0, or constant.
/// </summary>
public readonly record struct LrSchedule(double BaseLr, int TotalSteps, int WarmupSteps, string Kind)
{
    public static LrSchedule Create(double baseLr, int totalSteps, double warmupRatio, string kind) =>
        new(baseLr, totalSteps, (int)Math.Ceiling(warmupRatio * totalSteps), kind);

    public double At(int step)
    {
        if (step < WarmupSteps) return BaseLr * step / Math.Max(1, WarmupSteps);
        if (Kind == "constant") return BaseLr;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        progress = Math.Clamp(progress, 0, 1);
        return Kind == "linear" ? BaseLr * (1 - progress) : BaseLr * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}
