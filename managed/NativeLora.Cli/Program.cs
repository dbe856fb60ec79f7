using CommandLine;
using NativeLora.Cli;

// The `nativelora` command: one verb per operation. Help and version go to stdout with exit 0; usage
// errors are one `error:` line on stderr with exit 2; a failed command prints `error: <reason>` without a
// stack trace (set NATIVELORA_DEBUG=1 to see it) and exits 1.
Type[] verbs =
[
    typeof(InfoOptions), typeof(SelfCheckOptions), typeof(InitModelOptions), typeof(ImportOptions), typeof(GenerateOptions), typeof(TrainOptions),
    typeof(MergeOptions), typeof(PlanOptions), typeof(EvalOptions), typeof(ExportGgufOptions), typeof(InspectOptions), typeof(ServeOptions),
    typeof(DriftProfileOptions), typeof(QuantizeOptions),
];
NativeLora.Hub.ModelSource.DownloadProgress = new DownloadBar(Console.Error);
using var parser = new Parser(s => { s.HelpWriter = null; s.AutoHelp = true; s.AutoVersion = true; });
// train's config-key flags are TrainingConfig's keys, which have no attributes: taken out before CommandLineParser parses the rest
var arguments = ConfigFlags.Take(Usage.Normalize(args));
var result = parser.ParseArguments(arguments.Rest, verbs);
if (result is not Parsed<object> parsed) return Usage.Report(parser, arguments.Rest, (NotParsed<object>)result, verbs, Console.Out, Console.Error);
if (arguments.Error != null) return Usage.Fail($"train: {arguments.Error}", Console.Error);
if (parsed.Value is TrainOptions train) train.ConfigKeys = arguments.ConfigKeys;
return Run(() => parsed.Value switch
{
    InfoOptions o => Commands.Info(o),
    SelfCheckOptions o => Commands.SelfCheck(o),
    InitModelOptions o => Commands.InitModel(o),
    ImportOptions o => Commands.Import(o),
    GenerateOptions o => Commands.Generate(o),
    TrainOptions o => TrainCommand.Run(o),
    MergeOptions o => Commands.Merge(o),
    PlanOptions o => Commands.Plan(o),
    EvalOptions o => Commands.Eval(o),
    ExportGgufOptions o => Commands.ExportGguf(o),
    InspectOptions o => Commands.Inspect(o),
    ServeOptions o => ServeCommand.Run(o),
    DriftProfileOptions o => ServeCommand.DriftProfile(o),
    QuantizeOptions o => QuantizeCommand.Run(o),
    var o => throw new InvalidOperationException($"no command for {o.GetType().Name}"),
});

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
