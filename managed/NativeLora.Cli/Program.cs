using CommandLine;
using NativeLora.Cli;

// The `nativelora` command: one verb per operation. Errors are printed without a stack trace
// (set NATIVELORA_DEBUG=1 to see it) and exit non-zero.
return Parser.Default.ParseArguments<InfoOptions, SelfCheckOptions, InitModelOptions, ImportOptions, GenerateOptions, TrainOptions, MergeOptions, PlanOptions, EvalOptions, ExportGgufOptions, InspectOptions, ServeOptions, DriftProfileOptions, QuantizeOptions>(args)
    .MapResult(
        (InfoOptions o) => Run(() => Commands.Info(o)),
        (SelfCheckOptions o) => Run(() => Commands.SelfCheck(o)),
        (InitModelOptions o) => Run(() => Commands.InitModel(o)),
        (ImportOptions o) => Run(() => Commands.Import(o)),
        (GenerateOptions o) => Run(() => Commands.Generate(o)),
        (TrainOptions o) => Run(() => TrainCommand.Run(o)),
        (MergeOptions o) => Run(() => Commands.Merge(o)),
        (PlanOptions o) => Run(() => Commands.Plan(o)),
        (EvalOptions o) => Run(() => Commands.Eval(o)),
        (ExportGgufOptions o) => Run(() => Commands.ExportGguf(o)),
        (InspectOptions o) => Run(() => Commands.Inspect(o)),
        (ServeOptions o) => Run(() => ServeCommand.Run(o)),
        (DriftProfileOptions o) => Run(() => ServeCommand.DriftProfile(o)),
        (QuantizeOptions o) => Run(() => QuantizeCommand.Run(o)),
        _ => 2);

static int Run(Func<int> command)
{
    try
    {
        return command();
    }
    catch (Exception e)
    {
        Console.Error.WriteLine($"error: {e.Message}");
        if (Environment.GetEnvironmentVariable("NATIVELORA_DEBUG") == "1") Console.Error.WriteLine(e);
        return 1;
    }
}
