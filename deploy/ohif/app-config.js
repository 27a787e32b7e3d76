/** @type {AppTypes.Config} */
// The OHIF viewer's configuration for dicomcloud: Nginx serves the prebuilt viewer at /viewer/ and this file
// in place of its dist/app-config.js. The viewer and the archive share one origin behind Nginx, so the
// DICOMweb root is this page's own origin: no CORS, and the same file serves every host name.
// A tenant's archive is at `<origin>/<tenant>/dicom-web`: change DICOMWEB_ROOT for a single-tenant viewer.
// A wado-server serving the viewer itself (src/dicomcloud/web/viewer.py) sets `window.dicomcloud` in front of
// this file: its DICOMweb root and router base for the request's tenant, and its OIDC client when auth is on.
const DEPLOYMENT = window.dicomcloud || {};
const DICOMWEB_ROOT = DEPLOYMENT.dicomwebRoot || `${window.location.origin}/dicom-web`;

window.config = {
  name: 'dicomcloud',
  // Must match the Nginx location (and the PUBLIC_URL Nginx writes into the viewer's pages and bundles).
  routerBasename: DEPLOYMENT.routerBasename || '/viewer',
  ...(DEPLOYMENT.oidc ? { oidc: DEPLOYMENT.oidc } : {}),
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: {
    interaction: 100,
    thumbnail: 5,
    prefetch: 25,
  },
  showErrorDetails: 'always',
  defaultDataSourceName: 'dicomcloud',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomcloud',
      configuration: {
        friendlyName: 'dicomcloud',
        name: 'dicomcloud',
        qidoRoot: DICOMWEB_ROOT,
        wadoRoot: DICOMWEB_ROOT,
        wadoUriRoot: DICOMWEB_ROOT,
        // What the archive implements (see README, QIDO-RS): includefield, `*`/`?` wildcards on string VRs,
        // fuzzymatching=true on person names.
        qidoSupportsIncludeField: true,
        supportsWildcard: true,
        supportsFuzzyMatching: true,
        supportsReject: false,
        // Frames over WADO-RS (the archive hands out a syntax the viewer decodes, transcoding where needed),
        // and the archive's own /thumbnail resources for the study browser.
        imageRendering: 'wadors',
        thumbnailRendering: 'thumbnail',
        thumbnailRequestStrategy: 'fetch',
        enableStudyLazyLoad: true,
        // A live archive filters on the server; no client-side filtering of a static tree.
        staticWado: false,
        singlepart: 'bulkdata,video',
        // Series metadata carries absolute BulkDataURIs to the archive's /bulkdata resources.
        bulkDataURI: {
          enabled: true,
        },
        omitQuotationForMultipartRequest: true,
        // The study list's Upload sends files with STOW-RS to the same root.
        dicomUploadEnabled: true,
      },
    },
  ],
};
